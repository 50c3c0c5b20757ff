"""Sliding-window tagging of long recordings: boundaries found in a hand-built recording by a model trained here,
window scores against the model run by hand on windows cut from the fully loaded file, streaming decode against
whole-file decode, flat memory, the pipeline option, bad input."""

import csv
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, load_audio
from ast_hf.audio_io import AudioStream
from ast_hf.long_audio import iter_windows, tag_long_audio, window_starts
from helpers import RATE, recording, tiny_config

ATOL = 1e-5  # fp32 scores, same arithmetic in a different order


def boundaries(starts, ends, labels):
    """Times where the argmax label changes: halfway between the two windows' centres."""
    centres = (np.asarray(starts) + np.asarray(ends)) / 2
    return [float((centres[i] + centres[i + 1]) / 2) for i in range(len(labels) - 1) if labels[i] != labels[i + 1]]


@pytest.fixture(scope="module")
def recording_file(tmp_path_factory):
    wave, truth = recording()
    path = tmp_path_factory.mktemp("rec") / "speech_tone_noise.wav"
    sf.write(path, wave, RATE, subtype="FLOAT")
    return path, truth


def test_timeline_finds_the_boundaries_within_one_hop(trained, recording_file, tmp_path):
    model, fe = trained
    path, truth = recording_file
    tags = tag_long_audio(model, fe, path, progress=False)  # default window = 128 frames = 1.28 s, hop 0.64 s
    hop = 0.64
    assert np.allclose(np.diff(tags.starts)[:-1], hop)
    assert tags.ends[-1] == pytest.approx(12.0) and tags.duration == pytest.approx(12.0)
    winners = [tags.labels[i] for i in tags.scores.argmax(axis=1)]
    found = boundaries(tags.starts, tags.ends, winners)
    for t in truth:  # every true boundary is found within one hop ...
        assert min(abs(f - t) for f in found) <= hop, (t, found, winners)
    for f in found:  # ... and nothing is found away from them
        assert min(abs(f - t) for t in truth) <= hop, (f, found, winners)
    centre = (tags.starts + tags.ends) / 2
    for (lo, hi), name in zip([(0, 4), (4, 8), (8, 12)], ["speech", "tone", "noise"]):
        inside = [w for w, c in zip(winners, centre) if lo + hop <= c <= hi - hop]
        assert inside and all(w == name for w in inside), (name, inside)

    # The CSV timeline holds the same rows.
    tags.write_csv(tmp_path / "timeline.csv", top_k=1)
    rows = list(csv.DictReader(open(tmp_path / "timeline.csv")))
    assert {"start", "end", "label", "score"} <= set(rows[0])
    assert [r["label"] for r in rows] == winners
    assert np.allclose([float(r["start"]) for r in rows], tags.starts, atol=1e-3)
    # The plot is written (and was looked at: top labels over time above the spectrogram).
    png = tags.plot(tmp_path / "timeline.png", top_k=3)
    assert png.stat().st_size > 10_000 and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_window_scores_match_the_model_on_hand_cut_windows(trained, recording_file):
    model, fe = trained
    path, _ = recording_file
    tags = tag_long_audio(model, fe, path, window=2.0, hop=1.5, aggregate="max", batch_size=3, progress=False)
    wave = load_audio(path)
    n, step = 2 * RATE, round(1.5 * RATE)
    starts = list(range(0, len(wave) - n + 1, step))
    if starts[-1] + n < len(wave):
        starts.append(len(wave) - n)
    assert np.allclose(tags.starts, np.array(starts) / RATE)
    expected = []
    with torch.no_grad():
        for s in starts:  # one window at a time, the feature extractor's own padding to 200 frames (>= 128)
            x = fe(wave[s:s + n], sampling_rate=RATE, return_tensors="pt", padding="longest")["input_values"]
            expected.append(model(input_values=x).logits.softmax(-1)[0].numpy())
    expected = np.stack(expected)
    np.testing.assert_allclose(tags.scores, expected, atol=ATOL)
    np.testing.assert_allclose(tags.clip_scores, expected.max(axis=0), atol=ATOL)
    mean = tag_long_audio(model, fe, path, window=2.0, hop=1.5, aggregate="mean", progress=False)
    np.testing.assert_allclose(mean.clip_scores, expected.mean(axis=0), atol=ATOL)


def test_short_windows_are_padded_to_max_length_like_training(trained):
    """A window shorter than max_length frames is padded to it (the feature extractor's default behaviour)."""
    model, fe = trained
    wave, _ = recording()
    tags = tag_long_audio(model, fe, wave[: RATE * 3], sampling_rate=RATE, window=0.5, hop=0.5, progress=False)
    with torch.no_grad():
        x = fe(wave[:RATE // 2], sampling_rate=RATE, return_tensors="pt", padding="max_length",
               max_length=128)["input_values"]
        first = model(input_values=x).logits.softmax(-1)[0].numpy()
    np.testing.assert_allclose(tags.scores[0], first, atol=ATOL)


@pytest.mark.parametrize("rate,block", [(44100, 0.37), (22050, 1.0), (16000, 0.25), (8000, 0.5)])
def test_streamed_decoding_equals_decoding_the_whole_file(tmp_path, rate, block):
    rng = np.random.default_rng(rate)
    t = np.arange(int(5.3 * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    path = tmp_path / f"clip{rate}.flac"
    sf.write(path, np.stack([wave, -wave * 0.5], axis=1), rate)  # stereo: mixed down to mono
    whole = load_audio(path)
    streamed = np.concatenate(list(AudioStream(path, RATE, block_seconds=block)))
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    assert AudioStream(path).duration == pytest.approx(len(wave) / rate)


def test_ffmpeg_fallback_streams_formats_soundfile_cannot_read(tmp_path):
    import subprocess

    wav = tmp_path / "a.wav"
    sf.write(wav, recording()[0][: RATE * 3], RATE)
    m4a = tmp_path / "a.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    stream = AudioStream(m4a, block_seconds=0.3)
    assert stream.duration is None
    np.testing.assert_array_equal(np.concatenate(list(stream)), load_audio(m4a))


def test_undecodable_files_fail_alike_whole_and_streamed(tmp_path, monkeypatch):
    """Whole-file and streamed decoding share ffmpeg's fallback: same error naming the file and ffmpeg's reason,
    and a clear one when the ffmpeg binary is missing."""
    bad = tmp_path / "bad.m4a"
    bad.write_bytes(b"\x00\x01not audio" * 64)
    with pytest.raises(ValueError, match=r"cannot decode .*bad\.m4a: \S") as whole:
        load_audio(bad)
    with pytest.raises(ValueError) as streamed:
        list(AudioStream(bad))
    assert str(streamed.value) == str(whole.value) and "ffmpeg failed" not in str(whole.value)
    monkeypatch.setattr("shutil.which", lambda name: None)
    for decode in (load_audio, lambda path: list(AudioStream(path))):
        with pytest.raises(ValueError, match="ffmpeg binary is not installed"):
            decode(bad)


@pytest.mark.parametrize("total,window,hop", [(100, 30, 10), (100, 30, 40), (95, 30, 30), (30, 30, 7), (31, 30, 5)])
@pytest.mark.parametrize("block", [1, 7, 29, 1000])
def test_streamed_windows_cover_the_recording_as_window_starts_says(total, window, hop, block):
    signal = np.arange(total, dtype=np.float32)
    blocks = [signal[i:i + block] for i in range(0, total, block)]
    got = list(iter_windows(blocks, window, hop))
    starts = window_starts(total, window, hop)
    assert [s for s, _ in got] == starts
    for start, clip in got:
        np.testing.assert_array_equal(clip, signal[start:start + window])
    covered = np.zeros(total, bool)
    for start in starts:
        covered[start:start + window] = True
    assert starts[-1] + window == total  # the end is always seen
    assert covered.all() or hop > window  # and everything, unless the hop skips samples on purpose


def test_spectrogram_sketch_pools_exactly():
    from ast_hf.long_audio import _SpectrogramSketch

    frames = np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32)
    sketch = _SpectrogramSketch(max_columns=100)
    for piece in np.array_split(frames, 37):
        sketch.add(piece)
    assert sketch.pool == 16
    full = len(frames) // 16 * 16
    np.testing.assert_allclose(sketch.array()[:, : full // 16], frames[:full].reshape(-1, 16, 4).mean(1).T, atol=1e-5)


def test_memory_stays_flat_with_recording_length(tmp_path):
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config()).eval()
    fe = ASTFeatureExtractor(max_length=128)
    peaks = {}
    for minutes in (2, 8):
        path = tmp_path / f"{minutes}min.wav"
        rng = np.random.default_rng(minutes)
        with sf.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as f:
            for _ in range(minutes * 6):
                f.write(0.1 * rng.standard_normal(RATE * 10).astype(np.float32))
        tracemalloc.start()
        tags = tag_long_audio(model, fe, path, window=10.24, hop=10.0, batch_size=4, progress=False)
        peaks[minutes] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert tags.duration == pytest.approx(minutes * 60)
    file_bytes = 8 * 60 * RATE * 4  # the 8-minute recording as float32: 30.7 MB
    assert peaks[8] < 1.2 * peaks[2] + 5e5, peaks  # 4x longer, same peak (~14 MB: a 30 s block, 4 windows)
    assert peaks[8] < file_bytes / 2, peaks


def test_pipeline_chunking_matches_the_tagger(trained, recording_file):
    from transformers import pipeline

    import ast_hf
    from ast_hf import ASTAudioClassificationPipeline

    model, fe = trained
    path, _ = recording_file
    reference = tag_long_audio(model, fe, path, window=2.0, hop=1.0, progress=False)
    direct = ASTAudioClassificationPipeline(model=model, feature_extractor=fe)
    out = direct(str(path), chunk_length_s=2.0, stride_length_s=1.0, top_k=3)
    assert [d["label"] for d in out] == [label for label, _ in reference.top(3)]
    np.testing.assert_allclose([d["score"] for d in out], [s for _, s in reference.top(3)], atol=ATOL)
    # A waveform dict at another rate is resampled; return_timeline gives start/end/label/score rows.
    wave = load_audio(path, 22050)
    timed = direct({"array": wave, "sampling_rate": 22050}, chunk_length_s=2.0, stride_length_s=1.0, top_k=1,
                   return_timeline=True)
    assert [row["label"] for row in timed["timeline"]] == [reference.labels[i] for i in reference.scores.argmax(1)]
    assert [row["start"] for row in timed["timeline"]] == pytest.approx(list(reference.starts), abs=1e-3)
    # Without chunking it is transformers' pipeline: the first max_length frames.
    plain = direct(str(path), top_k=3)
    with torch.no_grad():
        x = fe(load_audio(path), sampling_rate=RATE, return_tensors="pt")["input_values"]
        first = model(input_values=x).logits.softmax(-1)[0]
    assert plain[0]["score"] == pytest.approx(first.max().item(), abs=ATOL)
    # register() makes pipeline("audio-classification") build this class; unregister() restores transformers'.
    from ast_hf.registration import is_registered

    already = is_registered()
    ast_hf.register()
    try:
        built = pipeline("audio-classification", model=model, feature_extractor=fe)
        assert isinstance(built, ASTAudioClassificationPipeline)
        assert built(str(path), chunk_length_s=2.0, stride_length_s=1.0, top_k=3) == out
    finally:
        if not already:
            ast_hf.unregister()
    if not already:
        assert not isinstance(pipeline("audio-classification", model=model, feature_extractor=fe),
                              ASTAudioClassificationPipeline)


def test_bad_input_gives_clear_errors(trained, tmp_path):
    model, fe = trained
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), RATE)
    with pytest.raises(ValueError, match="zero-length"):
        tag_long_audio(model, fe, empty, progress=False)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(RATE, np.float32), RATE)
    with pytest.raises(ValueError, match="longer than"):
        tag_long_audio(model, fe, short, window=2.0, progress=False)
    assert len(tag_long_audio(model, fe, short, progress=False).starts) == 1  # default window: scored whole
    for hop in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="hop must be a positive"):
            tag_long_audio(model, fe, short, hop=hop, progress=False)
    with pytest.raises(ValueError, match="window must be a positive"):
        tag_long_audio(model, fe, short, window=0, progress=False)
    with pytest.raises(ValueError, match="aggregate"):
        tag_long_audio(model, fe, short, aggregate="median", progress=False)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 50)
    with pytest.raises(ValueError, match="cannot decode"):
        tag_long_audio(model, fe, corrupt, progress=False)
    with pytest.raises(FileNotFoundError):
        tag_long_audio(model, fe, tmp_path / "missing.wav", progress=False)


def test_default_windows_per_call_follow_the_cpu_encoder_group():
    """On a CPU the encoder takes CPU_TOKENS_PER_CALL tokens at a time, so the default batch is what fits in it
    (two 10.24 s windows of AST base, more of a short-window model); on a GPU 8."""
    from ast_hf import ASTConfig
    from ast_hf.long_audio import default_windows_per_call
    from ast_hf.onednn import CPU_TOKENS_PER_CALL

    base = ASTConfig(max_length=1024)  # 12 x 101 patches + 2 tokens = 1214
    assert default_windows_per_call(base, torch.device("cpu")) == CPU_TOKENS_PER_CALL // 1214 == 2
    short = ASTConfig(max_length=128)  # 12 x 12 + 2 = 146 tokens
    assert default_windows_per_call(short, torch.device("cpu")) == CPU_TOKENS_PER_CALL // 146
    assert default_windows_per_call(base, torch.device("cuda")) == 8
    # the same bytes in bf16: twice the windows, as the encoder's own bf16 groups (onednn.clips_per_call)
    assert default_windows_per_call(base, torch.device("cpu"), torch.bfloat16) == 4
    assert default_windows_per_call(base, torch.device("cpu"), torch.float32) == 2


def test_a_hop_longer_than_the_window_is_refused(trained):
    """Windows every `hop` s must see every sample: a longer hop would leave audio no window scores."""
    model, fe = trained
    wave = recording()[0][: RATE * 5]
    with pytest.raises(ValueError, match=r"hop 3 s is longer than the window 1 s: .*gaps"):
        tag_long_audio(model, fe, wave, sampling_rate=RATE, window=1.0, hop=3.0, progress=False)
    tags = tag_long_audio(model, fe, wave, sampling_rate=RATE, window=1.0, hop=1.0, progress=False)  # hop = window
    assert tags.starts.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("size", [0, -1])
def test_embedding_refuses_a_batch_size_below_one(trained, size):
    """`batched`, which every windowed loop uses, made one batch of all windows for a size below 1 (`embed` ran a
    whole recording in one model call, unbounded in memory)."""
    from ast_hf import embed

    model, fe = trained
    with pytest.raises(ValueError, match=f"batch size must be at least 1, got {size}"):
        embed(model, fe, recording()[0][: RATE * 3], sampling_rate=RATE, window=1.0, hop=1.0, batch_size=size)
