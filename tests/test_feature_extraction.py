"""ASTFeatureExtractor against independent references: the authors' data loader (shared fixtures),
torchaudio's Kaldi fbank and transformers' ASTFeatureExtractor."""

import logging

import numpy as np
import pytest
import torch
import transformers
from torchaudio.compliance import kaldi

from ast_hf import ASTFeatureExtractor

SR = 16000
# Normalised units: float32 rounding in near-empty mel cells is the only allowed difference.
MAX_TOL, MEAN_TOL = 3e-3, 2e-5


def signals(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(3 * SR) / SR
    return {
        "noise": 0.1 * torch.randn(2 * SR + 123, generator=g),
        "tone+dc": 0.3 * torch.sin(2 * torch.pi * 440 * t[:SR]) + 0.2,
        "chirp": 0.5 * torch.sin(2 * torch.pi * (50 + 2000 * t) * t),
        "speechlike": torch.randn(7000, generator=g).cumsum(0) * 1e-3,
        "one_frame": 0.1 * torch.randn(400, generator=g),
    }


def test_matches_original_data_loader(fixtures_dir, caplog):
    ref = torch.load(fixtures_dir / "features.ref.pt", weights_only=True)
    fe = ASTFeatureExtractor(max_length=ref["target_length"], mean=ref["mean"], std=ref["std"])
    with caplog.at_level(logging.WARNING):
        out = fe(ref["waveforms"], sampling_rate=ref["sample_rate"], return_tensors="pt")["input_values"]
    expected = torch.stack(ref["normalized"])
    diff = (out - expected).abs()
    assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL, (diff.max(), diff.mean())
    assert "cut to that length" in caplog.text  # clip 4 is 10.5 s: the cut is announced, not silent
    # Un-normalised fbank too, on the real frames of each clip.
    raw = fe(ref["waveforms"], sampling_rate=SR, return_tensors="pt", padding="longest", truncation=False)
    fbank = raw["input_values"] * 2 * fe.std + fe.mean
    for i, n in enumerate(ref["n_frames_unpadded"]):
        n_ref = min(n, ref["target_length"])
        assert (fbank[i, :n_ref] - ref["fbank"][i][:n_ref]).abs().max() <= MAX_TOL * 2 * fe.std


def assert_as_close_to_exact_kaldi_as_torchaudio(wave: torch.Tensor, ours: torch.Tensor, num_mel_bins: int,
                                                 sample_frequency: int = SR) -> None:
    """Against Kaldi fbank computed in float64 (the exact answer): our float32 error is no larger than
    torchaudio's own float32 error (near-empty mel cells of a sweep lose digits to rounding in both)."""
    settings = dict(htk_compat=True, sample_frequency=sample_frequency, use_energy=False, window_type="hanning",
                    num_mel_bins=num_mel_bins, dither=0.0, frame_shift=10)
    exact, theirs = kaldi.fbank(wave.double()[None], **settings), kaldi.fbank(wave[None], **settings)
    assert ours.shape == exact.shape and ours.dtype == torch.float32
    ours_err, their_err = (ours.double() - exact).abs(), (theirs.double() - exact).abs()
    assert ours_err.max() <= 1.5 * their_err.max() + 1e-3, (ours_err.max(), their_err.max())
    assert ours_err.mean() <= 1.5 * their_err.mean() + 1e-5, (ours_err.mean(), their_err.mean())
    assert (ours - theirs).abs().max() <= 5e-2


@pytest.mark.parametrize("name", list(signals()))
@pytest.mark.parametrize("num_mel_bins", [128, 64])
@pytest.mark.parametrize("banded_mel", [True, False], ids=["banded mel (CPU default)", "dense mel (GPU default)"])
def test_matches_torchaudio_kaldi(name, num_mel_bins, banded_mel):
    from ast_hf.filterbank import log_mel_filterbank

    wave = signals()[name]
    ours, frames = log_mel_filterbank(wave[None], num_mel_bins=num_mel_bins, banded_mel=banded_mel)
    assert_as_close_to_exact_kaldi_as_torchaudio(wave, ours[0], num_mel_bins)
    assert frames.tolist() == [ours.shape[1]]
    # and the feature extractor (normalisation off) is that filterbank
    fe = ASTFeatureExtractor(num_mel_bins=num_mel_bins, do_normalize=False)
    torch.testing.assert_close(fe(wave, sampling_rate=SR, return_tensors="pt", padding="longest")["input_values"],
                               ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
@pytest.mark.parametrize("banded_mel", [True, False], ids=["banded", "dense"])
def test_other_sampling_rates_match_torchaudio_kaldi(rate, banded_mel):
    """Frame geometry (window, hop, FFT size, the block size of the frame means) follows the rate."""
    from ast_hf.filterbank import log_mel_filterbank

    g = torch.Generator().manual_seed(rate)
    t = torch.arange(int(1.3 * rate)) / rate
    wave = 0.3 * torch.sin(2 * torch.pi * 330 * t) + 0.05 * torch.randn(len(t), generator=g) + 0.1
    ours, _ = log_mel_filterbank(wave[None], sampling_rate=rate, num_mel_bins=64, banded_mel=banded_mel)
    assert_as_close_to_exact_kaldi_as_torchaudio(wave, ours[0], 64, sample_frequency=rate)


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


def test_same_as_transformers_feature_extractor():
    # (the sweep is left to the float64 comparison above: two float32 results differ by both roundings)
    waves = [w.numpy() for name, w in signals().items() if name != "chirp"]
    theirs = transformers.ASTFeatureExtractor()(waves, sampling_rate=SR, return_tensors="pt")["input_values"]
    ours = ASTFeatureExtractor()(waves, sampling_rate=SR, return_tensors="pt")["input_values"]
    diff = (ours - theirs).abs()
    assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL


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
    (np.zeros((2, 2, 16000), np.float32), "mono"),
    ([np.zeros((16000, 2), np.float32)], "mono"),
    ("audio.wav", "numpy array"),
    ([], "empty list"),
])
def test_bad_input_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        ASTFeatureExtractor()(bad, sampling_rate=SR)


def test_wrong_sampling_rate_is_refused():
    with pytest.raises(ValueError, match="44100 Hz.*resample"):
        ASTFeatureExtractor()(np.zeros(SR, np.float32), sampling_rate=44100)


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
    diff = (out["input_values"].cpu() - cpu).abs()
    assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL


def test_explicit_truncation_cuts_without_a_warning(caplog):
    fe = ASTFeatureExtractor(max_length=100)
    with caplog.at_level(logging.WARNING):
        out = fe(np.zeros(3 * SR, np.float32) + 0.01, sampling_rate=SR, return_tensors="pt", truncation=True)
    assert out["input_values"].shape == (1, 100, 128) and "cut" not in caplog.text
