"""Reading audio files as mono float32 waveforms at a target rate, with clear errors.

soundfile (libsndfile: WAV, FLAC, OGG, MP3) reads first; anything it cannot read is decoded by the `ffmpeg`
binary. Channels are averaged to mono and the rate converted with torchaudio's band-limited resampler.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch


def resample(waveform: np.ndarray | torch.Tensor, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited (sinc) resampling of a mono waveform [samples] from `orig_rate` to `target_rate` Hz."""
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_rate} -> {target_rate}")
    array = np.asarray(waveform, dtype=np.float32)
    if orig_rate == target_rate:
        return array
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(array), orig_rate, target_rate).numpy()


def ffmpeg_command(path: Path, sampling_rate: int) -> list[str]:
    """The `ffmpeg` command that writes `path` to stdout as mono float32 (f32le) at `sampling_rate` Hz.

    Raises:
        ValueError: the `ffmpeg` binary is not installed.
    """
    if shutil.which("ffmpeg") is None:
        raise ValueError(f"cannot decode {path}: soundfile does not read this format and the ffmpeg binary is "
                         f"not installed (apt-get install ffmpeg)")
    return ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(sampling_rate),
            "-f", "f32le", "-"]


def ffmpeg_error(path: Path, stderr: bytes) -> ValueError:
    """The error for a failed `ffmpeg` decode, carrying ffmpeg's last line of stderr as the reason."""
    reason = stderr.decode(errors="replace").strip().splitlines()
    return ValueError(f"cannot decode {path}: {reason[-1] if reason else 'ffmpeg failed'}")


def _decode_with_ffmpeg(path: Path, sampling_rate: int) -> np.ndarray:
    result = subprocess.run(ffmpeg_command(path, sampling_rate), capture_output=True, check=False)
    if result.returncode != 0:
        raise ffmpeg_error(path, result.stderr)
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def load_audio(path: str | Path, sampling_rate: int = 16000) -> np.ndarray:
    """Read an audio file as a mono float32 waveform [samples] in [-1, 1] at `sampling_rate` Hz.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such audio file: {path}")
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        waveform = resample(data.mean(axis=1), rate, sampling_rate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        waveform = _decode_with_ffmpeg(path, sampling_rate)
    if waveform.size == 0:
        raise ValueError(f"{path} holds no audio samples (zero-length recording)")
    if not np.isfinite(waveform).all():
        raise ValueError(f"{path} contains NaN or infinite samples")
    return waveform


__all__ = ["load_audio", "resample"]
