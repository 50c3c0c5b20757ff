"""ASTFeatureExtractor against independent references: the authors' data loader (shared fixtures),
torchaudio's Kaldi fbank and transformers' ASTFeatureExtractor."""

import logging

import numpy as np
import pytest
import torch
import transformers
from torchaudio.compliance import kaldi

from ast_hf import ASTFeatureExtractor

pytestmark = pytest.mark.numeric

SR = 16000
# Normalised units: float32 rounding in near-empty mel cells is the only allowed difference.
MAX_TOL, MEAN_TOL = 3e-3, 2e-5


def signals(seed=0):
    """One clip of each input class the filterbank must get right: speech-like noise, sweeps, pure tones,
    silence, clipping, int16 scale and DC offsets (each loses digits to float32 rounding in its own cells)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(3 * SR) / SR
    tone = torch.sin(2 * torch.pi * 440 * t[:SR])
    return {
        "noise": 0.1 * torch.randn(2 * SR + 123, generator=g),
        "speechlike": torch.randn(7000, generator=g).cumsum(0) * 1e-3,
        "chirp": 0.5 * torch.sin(2 * torch.pi * (50 + 2000 * t) * t),
        "tone": 0.3 * tone,
        "tone+dc": 0.3 * tone + 0.2,
        "silence": torch.zeros(SR),
        "near_silence": 1e-6 * torch.randn(SR, generator=g),
        "clipped": (3.0 * tone).clamp(-1.0, 1.0),
        "int16_scale": (0.3 * tone * 32767).round(),
        "large_dc": 0.01 * torch.randn(SR, generator=g) + 5.0,
        "int16_noise+dc": (0.1 * torch.randn(SR, generator=g) * 32767).round() + 1000.0,
        "one_frame": 0.1 * torch.randn(400, generator=g),
    }


def test_matches_original_data_loader(fixtures_dir, caplog):
    """The authors' loader ran torchaudio's float32 fbank: our features differ from its output by no more than
    that output's own float32 error against the float64 computation of the same waveforms."""
    ref = torch.load(fixtures_dir / "features.ref.pt", weights_only=True)
    fe = ASTFeatureExtractor(max_length=ref["target_length"], mean=ref["mean"], std=ref["std"])
    with caplog.at_level(logging.WARNING):
        out = fe(ref["waveforms"], sampling_rate=ref["sample_rate"], return_tensors="pt")["input_values"]
    expected = torch.stack(ref["normalized"])
    diff = (out - expected).abs()
    assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL, (diff.max(), diff.mean())
    assert "cut to that length" in caplog.text  # clip 4 is 10.5 s: the cut is announced, not silent
    raw = fe(ref["waveforms"], sampling_rate=SR, return_tensors="pt", padding="longest", truncation=False)
    fbank = raw["input_values"] * 2 * fe.std + fe.mean
    for i, n in enumerate(ref["n_frames_unpadded"]):
        n_ref = min(n, ref["target_length"])
        exact = kaldi.fbank(ref["waveforms"][i].double()[None], **kaldi_settings(128))[:n_ref]
        fixture_error = (ref["fbank"][i][:n_ref].double() - exact).abs().max()
        ours = fbank[i, :n_ref].double()
        assert (ours - ref["fbank"][i][:n_ref]).abs().max() <= fixture_error + 1e-5, i
        assert (ours - exact).abs().max() <= 1e-5, i  # float32 rounding of the output (x 2 std for normalising)


def kaldi_settings(num_mel_bins: int, sample_frequency: int = SR) -> dict:
    return dict(htk_compat=True, sample_frequency=sample_frequency, use_energy=False, window_type="hanning",
                num_mel_bins=num_mel_bins, dither=0.0, frame_shift=10)


def one_ulp(values: torch.Tensor) -> torch.Tensor:
    """The spacing of float32 numbers at each value: the output's own rounding (half of it, to nearest; a whole
    one where two float64 computations of a value lying on a rounding boundary round either way)."""
    values = values.to(torch.float32)
    return (torch.nextafter(values.abs(), torch.tensor(float("inf"))) - values.abs()).double()


def assert_as_close_to_exact_kaldi_as_torchaudio(wave: torch.Tensor, ours: torch.Tensor, num_mel_bins: int,
                                                 sample_frequency: int = SR) -> None:
    """Against Kaldi fbank computed in float64 (the exact answer), on this host: every cell is the exact value
    rounded to float32 (at most one float32 spacing off), so the largest error is at most torchaudio's own
    float32 error on the same input (ratio <= 1), except where both are at that rounding level (the absolute
    floor: one float32 spacing, 9.5e-7 at the log floor of -15.94)."""
    settings = kaldi_settings(num_mel_bins, sample_frequency)
    exact, theirs = kaldi.fbank(wave.double()[None], **settings), kaldi.fbank(wave[None], **settings)
    assert ours.shape == exact.shape and ours.dtype == torch.float32
    ours_err, their_err = (ours.double() - exact).abs(), (theirs.double() - exact).abs()
    floor = one_ulp(exact)
    assert (ours_err <= floor).all(), (ours_err - floor).max()
    assert ours_err.max() <= torch.maximum(their_err.max(), floor.max()), (ours_err.max(), their_err.max())
    assert ours_err.mean() <= torch.maximum(their_err.mean(), floor.mean()), (ours_err.mean(), their_err.mean())


@pytest.mark.parametrize("name", list(signals()))
@pytest.mark.parametrize("num_mel_bins", [128, 64])
@pytest.mark.parametrize("compiled_kernels", [True, False],
                         ids=["compiled kernels (CPU default)", "tensor operations (other devices)"])
def test_matches_torchaudio_kaldi(name, num_mel_bins, compiled_kernels):
    from ast_hf.filterbank import log_mel_filterbank

    wave = signals()[name]
    ours, frames = log_mel_filterbank(wave[None], num_mel_bins=num_mel_bins, compiled_kernels=compiled_kernels)
    assert_as_close_to_exact_kaldi_as_torchaudio(wave, ours[0], num_mel_bins)
    assert frames.tolist() == [ours.shape[1]]
    # and the feature extractor (normalisation off) is that filterbank
    fe = ASTFeatureExtractor(num_mel_bins=num_mel_bins, do_normalize=False)
    out = fe(wave, sampling_rate=SR, return_tensors="pt", padding="longest")["input_values"]
    if compiled_kernels:
        assert torch.equal(out, ours)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("compiled_kernels", [True, False], ids=["compiled kernels", "tensor operations"])
def test_other_sampling_rates_match_torchaudio_kaldi(rate, compiled_kernels):
    """Frame geometry (window, hop, FFT size, the block size of the frame means) follows the rate."""
    from ast_hf.filterbank import log_mel_filterbank

    g = torch.Generator().manual_seed(rate)
    t = torch.arange(int(1.3 * rate)) / rate
    wave = 0.3 * torch.sin(2 * torch.pi * 330 * t) + 0.05 * torch.randn(len(t), generator=g) + 0.1
    ours, _ = log_mel_filterbank(wave[None], sampling_rate=rate, num_mel_bins=64,
                                 compiled_kernels=compiled_kernels)
    assert_as_close_to_exact_kaldi_as_torchaudio(wave, ours[0], 64, sample_frequency=rate)


@pytest.mark.parametrize("compiled_kernels", [True, False], ids=["compiled kernels", "tensor operations"])
def test_batch_of_every_input_class_matches_exact_kaldi(compiled_kernels):
    """Clips of different lengths and scales in one padded batch: each is the exact answer rounded, as alone."""
    from ast_hf.filterbank import log_mel_filterbank

    waves = list(signals().values())
    lengths = torch.tensor([len(w) for w in waves])
    batch, frames = log_mel_filterbank(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths,
                                       frames_per_chunk=64, compiled_kernels=compiled_kernels)
    for wave, features, n in zip(waves, batch, frames.tolist()):
        assert_as_close_to_exact_kaldi_as_torchaudio(wave, features[:n], 128)
        assert (features[n:] == 0).all()


def test_filterbank_refuses_waveforms_that_require_grad():
    from ast_hf.filterbank import log_mel_filterbank

    with pytest.raises(ValueError, match="not differentiable"):
        log_mel_filterbank(torch.zeros(1, 16000, requires_grad=True))


def test_batch_equals_clips_alone():
    waves = list(signals().values())
    fe = ASTFeatureExtractor()
    batch = fe(waves, sampling_rate=SR, return_tensors="pt", return_attention_mask=True)
    for i, w in enumerate(waves):
        alone = fe(w, sampling_rate=SR, return_tensors="pt")["input_values"][0]
        torch.testing.assert_close(batch["input_values"][i], alone, atol=1e-6, rtol=0)
        n = fe.frames_for(len(w))
        assert batch["attention_mask"][i].sum() == n and batch["attention_mask"][i, :n].all()


@pytest.mark.parametrize("name", list(signals()))
def test_normalised_features_are_the_exact_values_rounded(name):
    """With AudioSet's normalisation (the default), every cell is (float64 Kaldi - mean) / (2 std) rounded once: at
    most one float32 spacing off, or 1e-12 where a value is so near 0 that float64's own rounding of the
    subtraction (~1e-15) exceeds that spacing."""
    wave = signals()[name]
    fe = ASTFeatureExtractor()
    ours = fe(wave, sampling_rate=SR, return_tensors="pt", padding="longest")["input_values"][0]
    exact = (kaldi.fbank(wave.double()[None], **kaldi_settings(128)) - fe.mean) / (2 * fe.std)
    error = (ours.double() - exact).abs()
    assert (error <= torch.clamp(one_ulp(exact), min=1e-12)).all(), (error - one_ulp(exact)).max()


@pytest.mark.parametrize("shift", [-4.2677393, 45.0, -60.0])
def test_any_shift_is_subtracted_exactly(shift):
    """The shift folds into the window (within MAX_WINDOWED_SHIFT) or is subtracted after the log (beyond): either
    way (log-mel - shift) / scale, each cell within one float32 spacing of the float64 computation."""
    from ast_hf.filterbank import log_mel_filterbank

    wave = signals()["chirp"]
    ours, _ = log_mel_filterbank(wave[None], shift=shift, scale=9.1)
    exact = (kaldi.fbank(wave.double()[None], **kaldi_settings(128)) - shift) / 9.1
    assert ((ours[0].double() - exact).abs() <= torch.clamp(one_ulp(exact), min=1e-12)).all()


def test_kept_buffers_never_leak_into_results():
    """The filterbank and the padded batch reuse buffers between calls: a result must not change when later
    calls (other batch sizes, lengths, dtypes) reuse them, and a repeated call must give the same values."""
    waves = list(signals().values())
    fe = ASTFeatureExtractor()
    first = fe(waves, sampling_rate=SR, return_tensors="pt")["input_values"]
    kept = first.clone()
    fe([w.double().numpy() for w in waves[:3]], sampling_rate=SR, return_tensors="pt", padding="longest")
    fe(waves[0], sampling_rate=SR, return_tensors="pt", max_length=50)
    assert torch.equal(first, kept)
    assert torch.equal(fe(waves, sampling_rate=SR, return_tensors="pt")["input_values"], kept)


def test_threads_featurise_concurrently():
    """Kept buffers are per thread: two threads featurising at once get what each gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    fe = ASTFeatureExtractor()
    inputs = [list(signals(seed).values()) for seed in range(4)]
    alone = [fe(waves, sampling_rate=SR, return_tensors="pt")["input_values"] for waves in inputs]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda waves: fe(waves, sampling_rate=SR, return_tensors="pt")["input_values"],
                                 inputs * 3))
    for i, result in enumerate(together):
        assert torch.equal(result, alone[i % len(inputs)]), i


def test_long_clip_is_read_only_up_to_the_output():
    """A clip longer than max_length frames gives the features of its first (frames - 1) hops + one window."""
    wave = signals()["noise"]
    fe = ASTFeatureExtractor(max_length=100)
    needed = 99 * 160 + 400
    whole = fe(wave, sampling_rate=SR, return_tensors="pt", truncation=True)["input_values"]
    cut = fe(wave[:needed], sampling_rate=SR, return_tensors="pt")["input_values"]
    assert torch.equal(whole, cut)


@pytest.mark.parametrize("name", list(signals()))
def test_same_as_transformers_feature_extractor(name):
    """transformers' extractor runs torchaudio's float32 fbank: we differ from it by its own float32 error (ours
    is the exact answer rounded), measured on this host against the float64 computation of the same clip."""
    wave = signals()[name]
    fe = ASTFeatureExtractor()
    theirs = transformers.ASTFeatureExtractor()(wave.numpy(), sampling_rate=SR, return_tensors="pt")["input_values"]
    ours = fe(wave, sampling_rate=SR, return_tensors="pt")["input_values"]
    n = min(fe.frames_for(len(wave)), fe.max_length)
    exact = (kaldi.fbank(wave.double()[None], **kaldi_settings(128))[:n] - fe.mean) / (2 * fe.std)
    their_error = (theirs[0, :n].double() - exact).abs().max()
    assert (ours[0, :n].double() - theirs[0, :n]).abs().max() <= their_error + 1e-6
    torch.testing.assert_close(ours[0, n:], theirs[0, n:], atol=1e-6, rtol=0)  # the padding


def test_input_types_agree():
    w = signals()["noise"]
    fe = ASTFeatureExtractor(max_length=256)
    ref = fe(w, sampling_rate=SR, return_tensors="np")["input_values"]
    for variant in (w.numpy(), w.tolist(), w.double().numpy(), [w], [w.numpy()], w[None], w.numpy()[None]):
        out = fe(variant, sampling_rate=SR, return_tensors="np")["input_values"]
        np.testing.assert_allclose(out, ref, atol=1e-6)
    listed = fe(w.numpy(), sampling_rate=SR)["input_values"]
    assert isinstance(listed, list) and listed[0].shape == (256, 128)


def test_padding_modes():
    fe = ASTFeatureExtractor(max_length=300)
    waves = [np.random.randn(SR).astype(np.float32) * 0.1, np.random.randn(SR // 2).astype(np.float32) * 0.1]
    fixed = fe(waves, sampling_rate=SR, return_tensors="pt", return_attention_mask=True)
    assert fixed["input_values"].shape == (2, 300, 128)
    longest = fe(waves, sampling_rate=SR, return_tensors="pt", padding="longest", return_attention_mask=True)
    assert longest["input_values"].shape == (2, 98, 128)
    assert longest["attention_mask"].sum(1).tolist() == [98, 48]
    # padded frames hold the normalised value of a zero log-mel cell, as in the authors' loader
    torch.testing.assert_close(longest["input_values"][1, 48:], torch.full((50, 128), -fe.mean / (2 * fe.std)))
    capped = fe(waves, sampling_rate=SR, return_tensors="pt", padding="longest", max_length=60)
    assert capped["input_values"].shape == (2, 60, 128)


def test_long_clip_is_cut_with_a_warning(caplog):
    fe = ASTFeatureExtractor(max_length=100)
    with caplog.at_level(logging.WARNING):
        out = fe(np.zeros(3 * SR, np.float32) + 0.01, sampling_rate=SR, return_tensors="pt")
    assert out["input_values"].shape == (1, 100, 128)
    assert "cut to that length" in caplog.text
    kept = fe(np.zeros(3 * SR, np.float32), sampling_rate=SR, return_tensors="pt", truncation=False)
    assert kept["input_values"].shape == (1, 298, 128)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros(399, np.float32), "shorter than one 25 ms frame"),
    (np.array([0.1] * 500 + [np.nan], np.float32), "NaN or infinite"),
    (np.array([0.1] * 500 + [np.inf], np.float32), "NaN or infinite"),
    (np.zeros((16000, 2), np.float32), "channels"),
    (np.zeros((0, 16000), np.float32), "empty batch"),
    (torch.zeros(0, 16000), "empty batch"),
    (np.zeros((2, 2, 16000), np.float32), "mono"),
    ([np.zeros((16000, 2), np.float32)], "mono"),
    ("audio.wav", "numpy array"),
    ([], "empty list"),
    ([["a", "b"] * 300], "give numbers"),
])
def test_bad_input_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        ASTFeatureExtractor()(bad, sampling_rate=SR)


def test_wrong_sampling_rate_is_refused():
    with pytest.raises(ValueError, match="44100 Hz.*resample"):
        ASTFeatureExtractor()(np.zeros(SR, np.float32), sampling_rate=44100)


@pytest.mark.parametrize("rate", ["16000", 16000.5, -16000, 0, True])
def test_sampling_rate_that_is_not_a_whole_number_of_hz_is_refused(rate):
    with pytest.raises(ValueError, match="sampling_rate must be a.*int number of Hz"):
        ASTFeatureExtractor()(np.zeros(SR, np.float32), sampling_rate=rate)


@pytest.mark.parametrize("max_length", [0, -5, 10.5])
def test_max_length_must_be_a_positive_number_of_frames(max_length):
    with pytest.raises(ValueError, match="max_length must be a positive number of frames"):
        ASTFeatureExtractor()(np.zeros(SR, np.float32), sampling_rate=SR, max_length=max_length)
    with pytest.raises(ValueError, match="max_length must be a positive number of frames"):
        ASTFeatureExtractor(max_length=max_length)


def test_config_interoperates_with_transformers(tmp_path):
    ours = ASTFeatureExtractor(max_length=512, mean=-6.6268077, std=5.358466, num_mel_bins=128)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.ASTFeatureExtractor.from_pretrained(tmp_path / "ours")
    assert (theirs.max_length, theirs.mean, theirs.std) == (512, -6.6268077, 5.358466)
    theirs.save_pretrained(tmp_path / "theirs")
    back = ASTFeatureExtractor.from_pretrained(tmp_path / "theirs")
    assert (back.max_length, back.mean, back.std) == (512, -6.6268077, 5.358466)
    w = signals()["noise"].numpy()
    diff = np.abs(back(w, sampling_rate=SR, return_tensors="np")["input_values"]
                  - theirs(w, sampling_rate=SR, return_tensors="np")["input_values"])
    assert diff.max() <= MAX_TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_stays_on_the_gpu():
    w = signals()["noise"].cuda()
    out = ASTFeatureExtractor()([w, w[:SR]], sampling_rate=SR, return_tensors="pt", return_attention_mask=True)
    assert out["input_values"].is_cuda and out["attention_mask"].is_cuda
    cpu = ASTFeatureExtractor()([w.cpu(), w[:SR].cpu()], sampling_rate=SR, return_tensors="pt")["input_values"]
    # float64 on both devices: the same rounded values, up to one float32 spacing where float64 results straddle
    # a rounding boundary (1e-6 in normalised units)
    torch.testing.assert_close(out["input_values"].cpu(), cpu, atol=1e-6, rtol=0)


def test_explicit_truncation_cuts_without_a_warning(caplog):
    fe = ASTFeatureExtractor(max_length=100)
    with caplog.at_level(logging.WARNING):
        out = fe(np.zeros(3 * SR, np.float32) + 0.01, sampling_rate=SR, return_tensors="pt", truncation=True)
    assert out["input_values"].shape == (1, 100, 128) and "cut" not in caplog.text


def test_negative_stride_views_are_featurised_like_copies():
    w = signals()["noise"].numpy()
    fe = ASTFeatureExtractor(max_length=256)
    for view in (w[::-1], np.stack([w, w])[:, ::-1]):
        out = fe(view, sampling_rate=SR, return_tensors="pt")["input_values"]
        torch.testing.assert_close(out, fe(view.copy(), sampling_rate=SR, return_tensors="pt")["input_values"],
                                   atol=0, rtol=0)


def test_clips_that_require_grad_are_refused_like_a_batch():
    w = signals()["noise"].clone().requires_grad_()
    fe = ASTFeatureExtractor()
    for grad_input in (w, [w], [w, w.detach()], w[None]):
        with pytest.raises(ValueError, match=r"not differentiable: pass waveforms\.detach\(\)"):
            fe(grad_input, sampling_rate=SR)


def test_integer_pcm_is_refused_with_how_to_convert():
    pcm = (signals()["noise"].numpy() * 32767).round().astype(np.int16)
    fe = ASTFeatureExtractor()
    for integer_input in (pcm, [pcm], pcm[None], torch.from_numpy(pcm), torch.from_numpy(pcm)[None], pcm.tolist()):
        with pytest.raises(ValueError, match=r"int\S* samples \(integer PCM\); convert to float in \[-1, 1\].*32768"):
            fe(integer_input, sampling_rate=SR)


def test_big_endian_samples_are_featurised_like_native_ones():
    """Float samples in big-endian byte order (np.frombuffer(data, ">f4"), RIFX/AIFF readers) are floats like any
    other: torch.from_numpy refuses them, so they were refused with a byte-order error."""
    w = signals()["noise"].numpy()
    fe = ASTFeatureExtractor(max_length=256)
    want = fe(w, sampling_rate=SR, return_tensors="pt")["input_values"]
    for swapped in (w.astype(">f4"), w.astype(">f4")[None], [w.astype(">f4")], np.stack([w, w]).astype(">f4")):
        got = fe(swapped, sampling_rate=SR, return_tensors="pt")["input_values"]
        torch.testing.assert_close(got, want.expand_as(got), atol=0, rtol=0)
    as_float64 = fe(w.astype(np.float64).astype(">f8"), sampling_rate=SR, return_tensors="pt")["input_values"]
    torch.testing.assert_close(as_float64, fe(w.astype(np.float64), sampling_rate=SR, return_tensors="pt")[
        "input_values"], atol=0, rtol=0)


def test_complex_tensors_are_refused_like_complex_arrays():
    """A complex numpy clip is refused; a complex tensor (clip, list of clips or padded batch) was cast to float32,
    its imaginary part dropped with only a torch UserWarning."""
    w = signals()["noise"]
    analytic = torch.complex(w, w.flip(0))
    fe = ASTFeatureExtractor()
    for complex_input in (analytic.numpy(), analytic, [analytic], [w, analytic], analytic[None]):
        with pytest.raises(ValueError, match=r"holds (torch\.)?complex64 values; give numbers \(float samples in"):
            fe(complex_input, sampling_rate=SR)


@pytest.mark.parametrize("setting, message", [
    ({"sampling_rate": "16000"}, r"sampling_rate must be an int number of Hz, got '16000'"),
    ({"sampling_rate": 0}, "sampling_rate must be a positive int number of Hz"),
    ({"num_mel_bins": 0}, "num_mel_bins must be a positive int, got 0"),
    ({"num_mel_bins": 64.0}, "num_mel_bins must be a positive int, got 64.0"),
    ({"mean": float("nan")}, "mean must be a finite number"),
    ({"mean": float("inf")}, "mean must be a finite number"),
    ({"std": float("nan")}, "std must be a finite number"),
    ({"std": float("inf")}, "std must be a finite number"),
    ({"std": 0.0}, "std must be positive"),
])
def test_bad_settings_are_refused_when_the_extractor_is_built(setting, message):
    """Refused at construction (or from_pretrained), not at the first call: there they failed with an unrelated
    message ("audio sampled at 16000 Hz, but this feature extractor expects 16000 Hz", a numpy reduction error) or,
    for a NaN or infinite mean or std, not at all (NaN or all-zero features)."""
    with pytest.raises(ValueError, match=message):
        ASTFeatureExtractor(**setting)


def test_settings_given_as_numpy_scalars_are_saved(tmp_path):
    """Settings computed with numpy (np.int64 frames or rates, np.float32 statistics) are accepted and saved as the
    same numbers: save_pretrained failed on them (numpy scalars are not JSON), e.g. at the end of a training run."""
    fe = ASTFeatureExtractor(sampling_rate=np.int64(16000), num_mel_bins=np.int64(64), max_length=np.int64(1024),
                             mean=np.float32(-4.25), std=np.float32(3.5))
    fe.save_pretrained(tmp_path)
    back = ASTFeatureExtractor.from_pretrained(tmp_path)
    assert (back.sampling_rate, back.num_mel_bins, back.max_length, back.mean, back.std) == (16000, 64, 1024, -4.25,
                                                                                               3.5)
    features = back(signals()["noise"].numpy(), sampling_rate=SR, return_tensors="pt")["input_values"]
    assert features.shape == (1, 1024, 64)
