"""The one decoder: a file gives the same samples through every entry point (load_audio, the streamed
AudioStream, training's decode_audio on the path and on the bytes, the pipeline's chunked preprocess, the block
source of tagging and embeddings) across WAV/FLAC/MP3/Ogg, mono/stereo and 8-48 kHz; truncated files warn or
fail with the file's name; sampling rates that are not a positive int are refused with one clear message."""

from __future__ import annotations

import subprocess
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, embed, explain, tag_long_audio
from ast_hf.audio_io import AudioStream, TruncatedAudioWarning, audio_blocks, load_audio
from ast_hf.pipeline import ASTAudioClassificationPipeline
from ast_hf.training import CorruptAudioError, decode_audio
from helpers import tiny_config

RATE = 16000
ATOL = 1e-5  # streamed resampling joins blocks; the same arithmetic up to float rounding


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return ASTAudioClassificationPipeline(model=ASTForAudioClassification(tiny_config()).eval(),
                                          feature_extractor=ASTFeatureExtractor(max_length=128))


def _clip(rate: int, channels: int, seconds: float = 0.6) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(rate + channels)
    left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(len(t))
    return (left if channels == 1 else np.stack([left, -0.5 * left], axis=1)).astype(np.float32)


def _write(folder, fmt: str, rate: int, channels: int):
    """WAV and FLAC by soundfile; MP3 and Ogg Vorbis by sox (its MP3s have no Xing header, so libsndfile only
    estimates their length: an intact file must not be taken for a truncated one)."""
    wav = folder / f"c{rate}_{channels}.wav"
    sf.write(wav, _clip(rate, channels), rate)
    if fmt == "wav":
        return wav
    path = wav.with_suffix(f".{fmt}")
    if fmt == "flac":
        sf.write(path, _clip(rate, channels), rate)
    else:
        subprocess.run(["sox", str(wav), str(path)], check=True)
    return path


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg"])
def test_every_entry_point_decodes_a_file_to_the_same_samples(tmp_path, pipe, fmt, rate, channels):
    path = _write(tmp_path, fmt, rate, channels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedAudioWarning)  # intact files never warn
        whole = load_audio(path, RATE)
        exact = {
            "decode_audio(path)": decode_audio(str(path), RATE, allow_upsampling=True),
            "decode_audio({'bytes'})": decode_audio({"path": None, "bytes": path.read_bytes()}, RATE,
                                                    allow_upsampling=True),
            "pipeline(bytes)": pipe.preprocess(path.read_bytes(), chunk_length_s=1.0)["long_audio"],
        }
        chunked = pipe.preprocess(str(path), chunk_length_s=1.0)  # the path: streamed by tag_long_audio
        streamed = {
            "AudioStream": np.concatenate(list(AudioStream(path, RATE, block_seconds=0.13))),
            "pipeline(path)": np.concatenate(list(audio_blocks(chunked["long_audio"], chunked["sampling_rate"],
                                                               RATE)[0])),
            "tag/embed blocks": np.concatenate(list(audio_blocks(str(path), None, RATE)[0])),
        }
    padding = 0.25 * RATE if fmt == "mp3" else 1  # MP3 adds encoder delay and pads to whole frames (1152 samples)
    assert whole.dtype == np.float32 and abs(len(whole) - round(0.6 * RATE)) <= padding
    for name, samples in exact.items():
        np.testing.assert_array_equal(samples, whole, err_msg=name)
    for name, samples in streamed.items():
        assert len(samples) == len(whole), name
        np.testing.assert_allclose(samples, whole, atol=ATOL, err_msg=name)


def _truncated_wav(folder, seconds: float = 2.0, kept: float = 1.25):
    """A 16-bit mono WAV whose header declares `seconds` of which only `kept` are present (cut mid-data)."""
    path = folder / "cut.wav"
    sf.write(path, _clip(RATE, 1, seconds), RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[:44 + 2 * round(kept * RATE)])  # 44-byte header, 2 bytes a frame
    return path


def test_a_wav_truncated_mid_data_warns_once_naming_the_file_and_what_is_missing(tmp_path):
    path = _truncated_wav(tmp_path)
    message = r"cut\.wav is truncated: its header declares 2\.000 s of audio but only 1\.250 s are present " \
              r"\(0\.750 s missing\)"
    for name, decode in [("load_audio", lambda: load_audio(path, RATE)),
                         ("AudioStream", lambda: np.concatenate(list(AudioStream(path, RATE, block_seconds=0.3)))),
                         ("decode_audio", lambda: decode_audio(str(path), RATE))]:
        with pytest.warns(TruncatedAudioWarning, match=message) as caught:
            samples = decode()
        assert len([w for w in caught if w.category is TruncatedAudioWarning]) == 1, name
        assert len(samples) == round(1.25 * RATE), name  # the part present is decoded
    with pytest.warns(TruncatedAudioWarning, match=r"the audio bytes is truncated.*0\.750 s missing"):
        load_audio(path.read_bytes(), RATE)
    intact = tmp_path / "intact.wav"
    sf.write(intact, _clip(RATE, 1, 2.0), RATE, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedAudioWarning)
        assert len(load_audio(intact, RATE)) == 2 * RATE


def test_a_truncated_flac_fails_alike_whole_and_streamed(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, _clip(RATE, 1, 2.0), RATE)
    path.write_bytes(path.read_bytes()[:-5000])  # cut inside a compressed frame: the decoder loses sync
    with pytest.raises(ValueError, match=r"cannot decode .*cut\.flac: \S") as whole:
        load_audio(path, RATE)
    with pytest.raises(ValueError) as streamed:
        list(AudioStream(path, RATE))
    assert str(streamed.value) == str(whole.value)
    with pytest.raises(CorruptAudioError, match=r"cannot decode .*cut\.flac"):
        decode_audio(str(path), RATE)


def test_sampling_rates_must_be_positive_ints(tmp_path, pipe):
    path = tmp_path / "a.wav"
    sf.write(path, _clip(RATE, 1), RATE)
    wave = _clip(RATE, 1)
    model, fe = pipe.model, pipe.feature_extractor
    as_string = r"sampling_rate must be an int number of Hz, got '16000' \(a str\); pass an int"
    for _name, call in [("load_audio", lambda rate: load_audio(path, rate)),
                       ("AudioStream", lambda rate: AudioStream(path, rate)),
                       ("tag_long_audio", lambda rate: tag_long_audio(model, fe, wave, sampling_rate=rate,
                                                                      progress=False)),
                       ("embed", lambda rate: embed(model, fe, wave, sampling_rate=rate)),
                       ("explain", lambda rate: explain(model, fe, wave, sampling_rate=rate)),
                       ("pipeline", lambda rate: pipe({"raw": wave, "sampling_rate": rate}, chunk_length_s=1.0))]:
        with pytest.raises(ValueError, match=as_string):
            call("16000")
        for bad in (0, -8000, 16000.5, True):
            with pytest.raises(ValueError, match="must be a positive int number of Hz"):
                call(bad)
    with pytest.raises(CorruptAudioError, match=as_string):
        decode_audio({"array": wave, "sampling_rate": "16000"})


@pytest.mark.parametrize("codec", ["aac", "libopus"])
def test_probe_reads_the_length_of_formats_only_ffmpeg_decodes(tmp_path, codec):
    """The app checks a recording's length from its header before decoding: m4a and WebM (browser recordings)
    have no soundfile header, so ffprobe's stated duration stands in (an estimate to a few ms)."""
    from ast_hf.audio_io import probe

    wav = tmp_path / "c.wav"
    sf.write(wav, _clip(16000, 1, seconds=2.0), 16000)
    encoded = tmp_path / ("c.m4a" if codec == "aac" else "c.webm")
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(wav), "-c:a", codec, str(encoded)], check=True)
    info = probe(encoded)
    assert info.sampling_rate in (16000, 48000)  # opus runs at 48 kHz
    assert info.frames / info.sampling_rate == pytest.approx(2.0, abs=0.05)
    assert probe(encoded.read_bytes()).frames == info.frames


def test_nan_samples_fail_alike_whole_and_streamed_through_ffmpeg(tmp_path):
    raw = tmp_path / "nan.f32"
    wave = _clip(RATE, 1, 1.5)
    wave[5000] = np.nan
    raw.write_bytes(wave.tobytes())
    path = tmp_path / "nan.mkv"  # soundfile cannot read Matroska: both decode through ffmpeg
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "f32le", "-ar", str(RATE), "-ac", "1", "-i", str(raw),
                    "-c:a", "pcm_f32le", str(path)], check=True)
    with pytest.raises(ValueError, match=r"nan\.mkv contains NaN or infinite samples") as whole:
        load_audio(path, RATE)
    with pytest.raises(ValueError) as streamed:
        list(AudioStream(path, RATE, block_seconds=0.25))
    assert str(streamed.value) == str(whole.value)


@pytest.mark.parametrize("block_seconds", [0, -1.0, float("nan"), float("inf")])
def test_audio_stream_block_seconds_must_be_positive_and_finite(tmp_path, block_seconds):
    path = tmp_path / "a.wav"
    sf.write(path, _clip(RATE, 1), RATE)
    with pytest.raises(ValueError, match="block_seconds must be a positive, finite number"):
        AudioStream(path, RATE, block_seconds=block_seconds)


def test_integer_pcm_waveforms_are_refused_with_how_to_convert(pipe):
    pcm = np.round(_clip(RATE, 1) * 32767).astype(np.int16)
    model, fe = pipe.model, pipe.feature_extractor
    for call in (lambda: audio_blocks(pcm, RATE, RATE),
                 lambda: audio_blocks(torch.from_numpy(pcm), RATE, RATE),
                 lambda: tag_long_audio(model, fe, pcm, sampling_rate=RATE, progress=False),
                 lambda: pipe(pcm),
                 lambda: pipe({"raw": pcm, "sampling_rate": RATE}, chunk_length_s=0.5)):
        with pytest.raises(ValueError, match=r"int16 samples \(integer PCM\); convert to float in \[-1, 1\].*32768"):
            call()


def test_complex_waveforms_are_refused_like_the_feature_extractor_refuses_them(pipe):
    """Casting complex samples to float drops the imaginary part (numpy only warns): every waveform entry point
    refuses them, as `ASTFeatureExtractor` refuses a complex numpy clip."""
    wave = _clip(RATE, 1)
    analytic = wave + 1j * wave[::-1]
    model, fe = pipe.model, pipe.feature_extractor
    for call in (lambda: audio_blocks(analytic, RATE, RATE),
                 lambda: audio_blocks(torch.from_numpy(analytic), RATE, RATE),
                 lambda: tag_long_audio(model, fe, analytic, sampling_rate=RATE, progress=False),
                 lambda: pipe(analytic),
                 lambda: pipe({"raw": analytic, "sampling_rate": RATE}, chunk_length_s=0.5),
                 lambda: fe(analytic, sampling_rate=RATE)):
        with pytest.raises(ValueError, match=r"holds complex\d+ values; give numbers \(float samples in \[-1, 1\]\)"):
            call()


@pytest.mark.parametrize("option", [{"return_timeline": True}, {"aggregate": "max"}, {"chunk_batch_size": 4}])
def test_window_options_without_windows_are_refused(pipe, option):
    """`return_timeline`, `aggregate` and `chunk_batch_size` shape the sliding windows: without chunk_length_s /
    stride_length_s the pipeline scores the start of the recording once, so they were silently ignored (a list of
    labels where a {"labels", "timeline"} dict was asked for, "max" doing nothing)."""
    wave = np.tile(_clip(RATE, 1), 5)  # 3 s: longer than the model's 1.28 s input
    with pytest.raises(ValueError, match=rf"{next(iter(option))} applies to sliding windows: pass chunk_length_s="):
        pipe(wave, **option)
    assert pipe(wave, chunk_length_s=1.0, **option)  # with windows they apply
    timeline = pipe(wave, chunk_length_s=1.0, return_timeline=True)
    assert set(timeline) == {"labels", "timeline"}
    assert isinstance(pipe(wave, return_timeline=False), list)  # asking for no timeline asks for nothing


def test_a_wav_that_soundfile_cannot_seek_decodes_whole_as_streamed(tmp_path):
    """libsndfile opens a GSM 6.10 WAV as not seekable, and soundfile reads "all frames" only from a seekable file:
    load_audio (so the pipeline and training) failed with soundfile's bare "frames must be specified for non-seekable
    files", naming no file, while AudioStream (block by block) decoded it. Both decode it, as ffmpeg does."""
    wav = tmp_path / "src.wav"
    sf.write(wav, _clip(8000, 1, seconds=2.0), 8000)
    path = tmp_path / "gsm.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(wav), "-c:a", "gsm_ms", str(path)], check=True)
    assert not sf.SoundFile(path).seekable()
    reference = np.frombuffer(subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "f32le",
                                              "-"], capture_output=True, check=True).stdout, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact file: no truncation warning either
        native = load_audio(path, 8000)
        np.testing.assert_allclose(native, reference, atol=1e-6)
        np.testing.assert_allclose(np.concatenate(list(AudioStream(path, 8000, block_seconds=0.3))), native, atol=1e-6)
        whole = load_audio(path, RATE)
        assert len(whole) == 2 * RATE
        np.testing.assert_allclose(np.concatenate(list(AudioStream(path, RATE, block_seconds=0.3))), whole, atol=ATOL)


def test_a_dict_whose_waveform_is_none_is_refused_by_name(pipe):
    """{"raw": None, "sampling_rate": ...} without "array" passed the check ("raw" is a key) and failed with a
    KeyError on "array"."""
    with pytest.raises(ValueError, match='a dict input needs "sampling_rate" and a "raw" or "array" waveform'):
        pipe({"raw": None, "sampling_rate": RATE})


@pytest.mark.parametrize("k", [2.0, True, "3"])
def test_select_top_refuses_a_k_that_is_not_a_whole_number(k):
    """A float k (top_k=2.0) failed with a TypeError from slicing; True was read as 1."""
    from ast_hf.inference import select_top

    with pytest.raises(ValueError, match="k must be >= 0, a whole number"):
        select_top(np.array([0.1, 0.7, 0.2]), ["a", "b", "c"], k)
    assert select_top(np.array([0.1, 0.7, 0.2]), ["a", "b", "c"], np.int64(2)) == [("b", 0.7), ("c", 0.2)]
