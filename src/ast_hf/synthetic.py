"""Audio made on the spot, for tests and the offline demo: spoken words (espeak-ng) and sounds (sox).

Both programs come from Debian (`apt-get install espeak-ng sox`). Every function returns a mono float32
waveform [samples] in [-1, 1] at `sampling_rate` Hz.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np

from .audio_io import resample


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise RuntimeError(f"{program} is not installed; install it with `apt-get install {program}`")
    return path


def espeak_voices(language: str = "en") -> list[str]:
    """espeak-ng's own voices for `language` (e.g. 'en-us', 'en-gb-scotland'; MBROLA voices left out), sorted.
    Any of them takes a variant suffix such as '+f3', '+m2' or '+whisper'."""
    out = subprocess.run([_require("espeak-ng"), f"--voices={language}"], capture_output=True, text=True,
                         check=True).stdout.splitlines()[1:]
    rows = [line.split() for line in out]
    return sorted({row[1] for row in rows if len(row) > 4 and row[4].startswith("gmw/")})


def speak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50, amplitude: int = 100,
          sampling_rate: int = 16000) -> np.ndarray:
    """Speak `text` with espeak-ng.

    Args:
        voice: espeak-ng voice, optionally with a variant ('en-us+f2', 'en-gb+m3', 'en+whisper').
        speed: words per minute (80-450). pitch: 0-99. amplitude: 0-200.
    """
    wav = subprocess.run(
        [_require("espeak-ng"), "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude), "--stdout",
         text], capture_output=True, check=True).stdout
    import soundfile as sf

    data, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    return resample(data.mean(axis=1), rate, sampling_rate)


def sox_synth(effect: list[str], duration: float, sampling_rate: int = 16000) -> np.ndarray:
    """Synthesise with `sox -n ... synth DURATION <effect...>`.

    Example: `sox_synth(["sine", "440"], 1.0)`, `sox_synth(["pinknoise"], 2.0)`,
    `sox_synth(["square", "300-900"], 1.0)` (a sweep), `sox_synth(["pluck", "220"], 1.0)`.
    """
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    raw = subprocess.run(
        [_require("sox"), "-q", "-R", "-n", "-r", str(sampling_rate), "-c", "1", "-b", "32", "-e", "floating-point",
         "-t", "raw", "-", "synth", f"{duration}", *effect], capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.float32).copy()


def add_noise(waveform: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at a signal-to-noise ratio of `snr_db` dB."""
    power = float(np.mean(np.square(waveform))) or 1e-8
    noise = rng.standard_normal(waveform.shape).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    return (waveform + noise).astype(np.float32)


def trim_silence(waveform: np.ndarray, sampling_rate: int = 16000, floor_db: float = -35.0) -> np.ndarray:
    """The waveform from its first to its last 10 ms frame whose RMS is within `floor_db` dB of the loudest
    frame's: the sound's own extent, so that a ground-truth onset and offset placed with it are exact."""
    hop = max(1, sampling_rate // 100)
    frames = len(waveform) // hop
    if frames == 0:
        return waveform
    rms = np.sqrt(np.mean(np.square(waveform[: frames * hop].reshape(frames, hop)), axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    return waveform[loud[0] * hop:(loud[-1] + 1) * hop]


__all__ = ["espeak_voices", "speak", "sox_synth", "add_noise", "trim_silence"]
