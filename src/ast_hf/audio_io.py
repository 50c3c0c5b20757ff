"""The one audio decoder: files, bytes and streams as mono float32 waveforms [samples] in [-1, 1] at a target rate.

Every entry point (load_audio, the streamed `AudioStream` that long-audio tagging, embeddings and batch inference
read, the pipeline, training's `decode_audio`) decodes here, with one fallback order and one set of errors:

1. soundfile (libsndfile: WAV, FLAC, OGG, MP3, AIFF, ...) when it can open the header: samples read at the native
   rate, channels averaged to mono, resampled with torchaudio's band-limited (sinc) resampler; whole, or block
   by block with enough context that the blocks join into the whole-file result (up to float rounding).
2. otherwise the `ffmpeg` binary (m4a, aac, opus in webm, ...), which mixes down and resamples itself.

A file cut short (its header declares more audio than is present, e.g. a WAV truncated mid-data) is decoded for
the part present with a `TruncatedAudioWarning` naming it and how many seconds are missing. Errors:
`FileNotFoundError` for a missing file, `ValueError` "cannot decode NAME: REASON" for an undecodable one, and
`ValueError`s for zero-length recordings, NaN/inf samples and sampling rates that are not a positive int.
"""

from __future__ import annotations

import io
import math
import numbers
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BLOCK_SECONDS = 30.0
# libsndfile's frame count is an estimate for these (MP3 without a Xing header, from the bitrate; Ogg from the last
# page), off by a few ms on intact files: only a larger shortfall counts as truncation there.
ESTIMATED_LENGTH_FORMATS = {"MP3", "OGG"}  # soundfile's format names
ESTIMATE_TOLERANCE = 0.02  # of the declared length
HEADER_BYTES = 1 << 16  # RIFF chunks before "data" (fmt, LIST, ...) fit in this


class TruncatedAudioWarning(UserWarning):
    """A recording holds less audio than its header declares; the part present is decoded."""


@dataclass
class AudioInfo:
    """A recording's header: native `sampling_rate` (Hz) and `frames` (None when only decoding tells; for formats
    only ffmpeg reads, the container's stated duration x the rate)."""

    sampling_rate: int
    frames: int | None


def check_sampling_rate(value, name: str = "sampling_rate") -> int:
    """`value` as an int number of Hz; a string, a fractional or non-positive number raises a `ValueError`."""
    if isinstance(value, str):
        raise ValueError(f"{name} must be an int number of Hz, got {value!r} (a str); pass an int, e.g. 16000")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer() or value <= 0:
        raise ValueError(f"{name} must be a positive int number of Hz, got {value!r} ({type(value).__name__})")
    return int(value)


def float_samples(audio, name: str = "the waveform") -> np.ndarray:
    """`audio` (array, tensor or list of samples) as a float32 array; integer (PCM) or bool samples raise a
    `ValueError`: they are not floats in [-1, 1], and casting them would give features at the wrong scale; so do
    complex samples (casting would drop the imaginary part), as the feature extractor refuses them."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    array = np.asarray(audio)
    if array.dtype.kind in "biu":
        raise ValueError(integer_samples_message(name, array.dtype))
    if array.dtype.kind == "c":
        raise ValueError(complex_samples_message(name, array.dtype))
    return array.astype(np.float32, copy=False)


def complex_samples_message(what: str, dtype) -> str:
    """Why complex samples are refused (casting them to float would silently drop the imaginary part)."""
    return f"{what} holds {dtype} values; give numbers (float samples in [-1, 1]), not complex ones"


def integer_samples_message(what: str, dtype) -> str:
    """Why integer (PCM) samples are refused, and how to convert them."""
    return f"{what} holds {dtype} samples (integer PCM); convert to float in [-1, 1] first, e.g. x / 32768 for int16"


def source_name(source) -> str:
    """How messages name a source: its path, or "the audio bytes"."""
    return "the audio bytes" if isinstance(source, (bytes, bytearray)) else str(source)


def resample(waveform: np.ndarray | torch.Tensor, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited (sinc) resampling of a mono waveform [samples] from `orig_rate` to `target_rate` Hz."""
    orig_rate, target_rate = check_sampling_rate(orig_rate, "orig_rate"), check_sampling_rate(target_rate)
    array = np.asarray(waveform, dtype=np.float32)
    if orig_rate == target_rate:
        return array
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(array), orig_rate, target_rate).numpy()


class StreamResampler:
    """Resample a mono stream pushed block by block (blocks of any sizes) with torchaudio's sinc resampler.

    Each block is resampled with `margin` samples of real context on both sides, cut at whole resampler periods,
    so the blocks returned by `push` and then `flush` join into the resampling of the whole stream at once (up to
    float rounding). Output lags input by about `margin` samples until `flush`.
    """

    def __init__(self, orig_rate: int, target_rate: int):
        self.orig_rate = check_sampling_rate(orig_rate, "orig_rate")
        self.target_rate = check_sampling_rate(target_rate, "target_rate")
        g = math.gcd(self.orig_rate, self.target_rate)
        self._step_in, self._step_out = self.orig_rate // g, self.target_rate // g
        # torchaudio's kernel reaches ceil(6 * orig / (0.99 * new)) input samples each way: keep more than that.
        need = 16 * math.ceil(self.orig_rate / self.target_rate) + 64
        self._margin = math.ceil(need / self._step_in) * self._step_in
        self._history = np.zeros(0, np.float32)  # up to `margin` samples before `pending`
        self._pending = np.zeros(0, np.float32)  # not yet emitted; starts on a whole period

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        import torchaudio.functional as AF

        return AF.resample(torch.from_numpy(chunk), self.orig_rate, self.target_rate).numpy()

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add mono samples [n] at `orig_rate`; return the float32 samples [m] at `target_rate` now final."""
        block = np.asarray(block, dtype=np.float32)
        if self.orig_rate == self.target_rate:
            return block
        self._pending = np.concatenate([self._pending, block])
        ready = (len(self._pending) - self._margin) // self._step_in * self._step_in
        if ready <= 0:
            return np.zeros(0, np.float32)
        skip = len(self._history) // self._step_in * self._step_out
        out = self._run(np.concatenate([self._history, self._pending[:ready + self._margin]]))
        self._history = np.concatenate([self._history, self._pending[:ready]])[-self._margin:]
        self._pending = self._pending[ready:]
        return out[skip:skip + ready // self._step_in * self._step_out]

    def flush(self) -> np.ndarray:
        """End of the stream: the rest of the resampled samples [m]; the resampler is then ready for a new one."""
        out = np.zeros(0, np.float32)
        if len(self._pending):
            skip = len(self._history) // self._step_in * self._step_out
            out = self._run(np.concatenate([self._history, self._pending]))[skip:]
        self._history = self._pending = np.zeros(0, np.float32)
        return out


def resample_stream(blocks: Iterable[np.ndarray], orig: int, new: int) -> Iterator[np.ndarray]:
    """Resample a stream of mono blocks block by block (`StreamResampler`); the blocks join into the whole
    recording resampled at once (up to float rounding)."""
    if orig == new:
        yield from blocks
        return
    resampler = StreamResampler(orig, new)
    for block in blocks:
        out = resampler.push(block)
        if len(out):
            yield out
    tail = resampler.flush()
    if len(tail):
        yield tail


# --------------------------------------------------------------------------------------------------------------
# soundfile: headers, native-rate blocks, truncation
# --------------------------------------------------------------------------------------------------------------


def _soundfile_source(source):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)


def _open_soundfile(source):
    """A `soundfile.SoundFile` opened on a path or bytes (its header read: samplerate, frames, format, channels), or
    None when libsndfile does not read the format. The caller closes it."""
    import soundfile as sf

    try:
        return sf.SoundFile(_soundfile_source(source))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None


def _soundfile_info(source):
    """soundfile's header info of a path or bytes, or None when libsndfile does not read the format."""
    opened = _open_soundfile(source)
    if opened is None:
        return None
    opened.close()
    return opened  # samplerate, frames, format and channels stay readable after closing


def _wav_declared_frames(head: bytes) -> int | None:
    """Frames a RIFF/WAVE header declares (data chunk bytes / block align). libsndfile shrinks its own count to
    the bytes present, so this is how a WAV cut mid-data shows. None for other formats and for the placeholder
    sizes (0, 0xFFFFFFFF) of WAVs written to a pipe."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = int.from_bytes(head[pos + 20:pos + 22], "little")
        elif chunk == b"data":
            return size // block_align if block_align and 0 < size < 0xFFFFFFFF else None
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None


def _declared_frames(source, info) -> int:
    if isinstance(source, (bytes, bytearray)):
        head = bytes(source[:HEADER_BYTES])
    else:
        with open(source, "rb") as f:
            head = f.read(HEADER_BYTES)
    return max(info.frames, _wav_declared_frames(head) or 0)


def _warn_if_truncated(name: str, info, declared: int, read: int) -> None:
    tolerance = ESTIMATE_TOLERANCE * declared if info.format in ESTIMATED_LENGTH_FORMATS else 0
    if declared - read > tolerance:
        rate = info.samplerate
        warnings.warn(f"{name} is truncated: its header declares {declared / rate:.3f} s of audio but only "
                      f"{read / rate:.3f} s are present ({(declared - read) / rate:.3f} s missing); decoding the "
                      f"part present", TruncatedAudioWarning, stacklevel=3)


def _native_blocks(source, name: str, block_frames: int = -1, opened=None) -> Iterator[np.ndarray]:
    """Mono float32 blocks [samples] at the native rate, `block_frames` each (-1: all at once), read through
    `opened` (an open `SoundFile` of `source`, closed here) or a new one; warns at the end when fewer frames came
    than the header declares."""
    import soundfile as sf

    read = 0
    try:
        with opened or sf.SoundFile(_soundfile_source(source)) as f:
            declared = _declared_frames(source, f)
            mono = f.channels == 1
            if block_frames < 0 and not f.seekable():  # soundfile reads "all frames" only from a seekable file
                block_frames = max(1, int(BLOCK_SECONDS * f.samplerate))  # (a GSM 6.10 WAV is not): in blocks
            while True:
                data = f.read(block_frames, dtype="float32", always_2d=not mono)
                if not len(data):
                    break
                read += len(data)
                yield data if mono else data.mean(axis=1, dtype=np.float32)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise ValueError(f"cannot decode {name}: {error}") from error
    _warn_if_truncated(name, f, declared, read)


# --------------------------------------------------------------------------------------------------------------
# ffmpeg: whatever libsndfile does not read
# --------------------------------------------------------------------------------------------------------------


def _ffmpeg_command(source, sampling_rate: int, name: str) -> list[str]:
    """The `ffmpeg` command writing `source` (a path, or bytes on stdin) to stdout as mono f32le at the rate."""
    if shutil.which("ffmpeg") is None:
        raise ValueError(f"cannot decode {name}: soundfile does not read this format and the ffmpeg binary is "
                         f"not installed (apt-get install ffmpeg)")
    if isinstance(source, (bytes, bytearray)):
        location, stdin = "pipe:0", []
    else:
        location, stdin = str(source), ["-nostdin"]  # a file: ffmpeg must not read the caller's terminal
    return ["ffmpeg", *stdin, "-v", "error", "-i", location, "-ac", "1", "-ar", str(sampling_rate), "-f", "f32le",
            "-"]


def _ffmpeg_error(name: str, stderr: bytes) -> ValueError:
    """The error for a failed `ffmpeg` decode, carrying ffmpeg's last line of stderr as the reason."""
    reason = stderr.decode(errors="replace").strip().splitlines()
    return ValueError(f"cannot decode {name}: {reason[-1] if reason else 'ffmpeg failed'}")


def _ffmpeg_decode(source, sampling_rate: int, name: str) -> np.ndarray:
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else None
    result = subprocess.run(_ffmpeg_command(source, sampling_rate, name), input=data, capture_output=True,
                            check=False)
    if result.returncode != 0:
        raise _ffmpeg_error(name, result.stderr)
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def _ffprobe_header(source, name: str) -> AudioInfo:
    """The first audio stream's rate and, when the container states a duration, its frames (from the stream's
    duration, else the container's: an estimate to a few ms; None when neither is stated, as in a live WebM)."""
    if shutil.which("ffprobe") is None:
        raise ValueError(f"cannot decode {name}: soundfile does not read this format and the ffprobe binary is "
                         f"not installed (apt-get install ffmpeg)")
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else None
    location = "pipe:0" if data is not None else str(source)
    result = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                             "stream=sample_rate,duration:format=duration", "-of", "default=noprint_wrappers=1",
                             location], input=data, capture_output=True, check=False)
    rate, durations = "", []
    for line in result.stdout.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key == "sample_rate":
            rate = rate or value.strip()
        elif key == "duration" and value.strip().replace(".", "", 1).isdigit():
            durations.append(float(value))  # the stream's first, then the container's; "N/A" when not stated
    if result.returncode != 0 or not rate.isdigit():
        raise _ffmpeg_error(name, result.stderr or b"no audio stream")
    return AudioInfo(int(rate), round(durations[0] * int(rate)) if durations else None)


# --------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------


def _check_file(source) -> None:
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise FileNotFoundError(f"no such audio file: {source}")


def _checked(waveform: np.ndarray, name: str) -> np.ndarray:
    if waveform.size == 0:
        raise ValueError(f"{name} holds no audio samples (zero-length recording)")
    if not np.isfinite(waveform).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    return waveform


def probe(source: str | Path | bytes, name: str | None = None) -> AudioInfo:
    """The header of a file or of encoded bytes, without decoding samples (soundfile, else ffprobe, whose frame
    count comes from the stated duration and is None when the container states none).

    Raises:
        FileNotFoundError: no such file. ValueError: neither reads it.
    """
    name = name or source_name(source)
    _check_file(source)
    info = _soundfile_info(source)
    if info is not None:
        return AudioInfo(int(info.samplerate), int(info.frames))
    return _ffprobe_header(source, name)


def load_audio(source: str | Path | bytes, sampling_rate: int = 16000, name: str | None = None,
               check_rate: Callable[[int], None] | None = None) -> np.ndarray:
    """Decode a whole file, or encoded bytes, as a mono float32 waveform [samples] in [-1, 1] at `sampling_rate` Hz.

    `name` names the source in messages (default: its path, or "the audio bytes"). `check_rate` is called with the
    native rate (Hz) from the header before any sample is decoded, to refuse a file by its rate (it raises).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the source cannot be decoded, holds no samples or NaN/inf, or `sampling_rate` is not a
            positive int.
    Warns:
        TruncatedAudioWarning: the header declares more audio than is present.
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    name = name or source_name(source)
    _check_file(source)
    opened = _open_soundfile(source)  # one open for the header and the samples
    if opened is None:
        if check_rate is not None:
            check_rate(_ffprobe_header(source, name).sampling_rate)
        return _checked(_ffmpeg_decode(source, sampling_rate, name), name)
    rate = opened.samplerate
    with opened:  # closed if check_rate refuses the file (_native_blocks closes it otherwise)
        if check_rate is not None:
            check_rate(rate)
        blocks = list(_native_blocks(source, name, opened=opened))
    native = _checked(blocks[0] if len(blocks) == 1 else np.concatenate(blocks or [np.zeros(0, np.float32)]), name)
    return _checked(resample(native, rate, sampling_rate), name)


class AudioStream:
    """A recording decoded block by block as mono float32 [samples] at `sampling_rate` Hz.

    Iterating yields consecutive blocks of about `block_seconds`; they join into what `load_audio` returns (up to
    float rounding when resampled). `duration` (seconds) is known up front for files soundfile reads, and None
    for the ffmpeg fallback.

    Raises:
        FileNotFoundError: no such file. ValueError: `block_seconds` is not a positive finite number; while
            iterating, the file cannot be decoded or holds NaN/inf samples.
    Warns (at the end of the iteration):
        TruncatedAudioWarning: the header declares more audio than is present.
    """

    def __init__(self, path: str | Path, sampling_rate: int = 16000, block_seconds: float = BLOCK_SECONDS):
        self.path = Path(path)
        _check_file(self.path)
        self.sampling_rate = check_sampling_rate(sampling_rate)
        if isinstance(block_seconds, bool) or not isinstance(block_seconds, numbers.Real) or not (
                math.isfinite(block_seconds) and block_seconds > 0):
            raise ValueError(f"block_seconds must be a positive, finite number of seconds, got {block_seconds!r}")
        self.block_seconds = block_seconds
        self._info = _soundfile_info(self.path)
        frames = self._info.frames if self._info is not None else 0
        self.duration: float | None = frames / self._info.samplerate if frames > 0 else None

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._ffmpeg_blocks() if self._info is None else self._soundfile_blocks()

    def _soundfile_blocks(self) -> Iterator[np.ndarray]:
        rate = self._info.samplerate
        native = _native_blocks(self.path, str(self.path), max(1, int(self.block_seconds * rate)))
        for out in resample_stream(native, rate, self.sampling_rate):
            if not np.isfinite(out).all():
                raise ValueError(f"{self.path} contains NaN or infinite samples")
            yield out

    def _ffmpeg_blocks(self) -> Iterator[np.ndarray]:
        command = _ffmpeg_command(self.path, self.sampling_rate, str(self.path))
        block_bytes = 4 * max(1, int(self.block_seconds * self.sampling_rate))
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
            try:
                while True:
                    data = process.stdout.read(block_bytes)
                    if not data:
                        break
                    usable = len(data) // 4 * 4
                    block = np.frombuffer(data[:usable], dtype=np.float32).copy()
                    if not np.isfinite(block).all():
                        raise ValueError(f"{self.path} contains NaN or infinite samples")
                    yield block
                if process.wait() != 0:
                    errors.seek(0)
                    raise _ffmpeg_error(str(self.path), errors.read())
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                process.stdout.close()


def decoder_samples(decoder) -> tuple[np.ndarray, int]:
    """A torchcodec `AudioDecoder` (what `datasets` 5 and transformers hand over already opened) as (mono float32
    [samples], native rate in Hz)."""
    samples = decoder.get_all_samples()
    return samples.data.mean(dim=0).numpy().astype(np.float32, copy=False), int(samples.sample_rate)


def audio_blocks(audio, sampling_rate: int | None, target_rate: int) -> tuple[Iterable[np.ndarray], float | None, str]:
    """(blocks at `target_rate`, duration in seconds or None, a name for messages) for a path (streamed) or a
    mono float waveform [samples] in [-1, 1] at `sampling_rate` Hz (integer PCM is refused: divide by 32768 for
    int16): the block source of tagging, embeddings and explanations."""
    if isinstance(audio, (str, Path)):
        if sampling_rate is not None:
            check_sampling_rate(sampling_rate)
        stream = AudioStream(audio, target_rate)
        return stream, stream.duration, str(audio)
    waveform = float_samples(audio)
    if waveform.ndim != 1:
        raise ValueError(f"waveform has shape {waveform.shape}; give one mono clip [samples] (mix channels down with "
                         f".mean(axis=-1))")
    if sampling_rate is None:
        raise ValueError("pass sampling_rate= (Hz) with a waveform; it is resampled to the model's rate if needed")
    waveform = resample(waveform, check_sampling_rate(sampling_rate), target_rate)
    if not np.isfinite(waveform).all():
        raise ValueError("the waveform contains NaN or infinite samples")
    return [waveform], len(waveform) / target_rate, "the waveform"


__all__ = ["load_audio", "AudioStream", "audio_blocks", "probe", "AudioInfo", "resample", "StreamResampler",
           "resample_stream", "check_sampling_rate", "decoder_samples", "TruncatedAudioWarning"]
