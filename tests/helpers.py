"""Helpers shared by the tests (imported as `from helpers import ...`): paths to the shared ground truth, a tiny
AST config, speech / tone / noise audio made on the spot (espeak-ng, sox) and a tiny AST trained in a few seconds to
tell the three apart. Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AST_HF_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "original"
SSAST_FIXTURES = SHARED / "fixtures" / "ssast"


def tiny_config(**overrides):
    """A small AST config (2 layers, D=64) for fast tests; keyword arguments override fields."""
    from ast_hf import ASTConfig

    fields = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_length=128, num_mel_bins=128, num_labels=5, layer_norm_eps=1e-6,
                  classifier_layer_norm_eps=1e-5)
    fields.update(overrides)
    return ASTConfig(**fields)


RATE = 16000
CLASSES = ["speech", "tone", "noise"]
CLIP_SECONDS = 1.28  # the tiny model's input: 128 frames
TEXTS = ["the quick brown fox jumps over the lazy dog", "seven large boats sailed into the harbour at dawn",
         "please remember to water the plants on thursday", "a distant train whistled across the frozen valley"]


def _trim(wave: np.ndarray, level: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wave) > level)
    return wave[loud[0]:loud[-1] + 1] if len(loud) else wave


def speech(seconds: float, voice: str = "en-us", seed: int = 0) -> np.ndarray:
    """Continuous espeak-ng speech of exactly `seconds`, without leading or trailing silence."""
    from ast_hf.synthetic import speak

    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * RATE:
        text = TEXTS[int(rng.integers(len(TEXTS)))]
        part = _trim(speak(text, voice=voice, speed=int(rng.integers(170, 230)), pitch=int(rng.integers(30, 70))))
        parts.append(part)
        total += len(part)
    wave = np.concatenate(parts)[: round(seconds * RATE)]
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def tone(seconds: float, frequency: float = 440.0) -> np.ndarray:
    from ast_hf.synthetic import sox_synth

    return (0.5 * sox_synth(["sine", f"{frequency:g}"], seconds)).astype(np.float32)[: round(seconds * RATE)]


def noise(seconds: float, colour: str = "white", seed: int = 0) -> np.ndarray:
    """Seeded white, pink (1/f power) or brown (1/f^2) noise, peak 0.5 (sox's noise generators are not seeded)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    power = {"white": 0.0, "pink": 1.0, "brown": 2.0}[colour]
    spectrum[1:] /= freqs[1:] ** (power / 2)
    spectrum[0] = 0.0
    wave = np.fft.irfft(spectrum, n)
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def recording() -> tuple[np.ndarray, list[float]]:
    """12 s: speech 0-4 s, a 660 Hz tone 4-8 s, pink noise 8-12 s; returns (waveform, [4.0, 8.0])."""
    wave = np.concatenate([speech(4.0, voice="en-gb", seed=7), tone(4.0, 660.0), noise(4.0, "pink", seed=7)])
    return wave, [4.0, 8.0]


def _training_clips(rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
    """30 clips per class, cut from a few long generated recordings (few espeak-ng / sox calls)."""
    n = round(CLIP_SECONDS * RATE)

    def crops(long: np.ndarray, count: int) -> list[np.ndarray]:
        return [long[s:s + n] for s in rng.integers(0, len(long) - n, size=count)]

    clips = []
    for voice, seed in (("en-us", 1), ("en-gb", 2), ("en-us+f3", 3)):
        clips += crops(speech(6.0, voice=voice, seed=seed), 10)
    t = np.arange(n) / RATE
    clips += [(rng.uniform(0.1, 0.7) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))).astype(np.float32)
              for f in rng.uniform(200, 3000, size=30)]
    for seed, colour in enumerate(("white", "pink", "brown")):
        clips += [c * rng.uniform(0.3, 2.0) for c in crops(noise(6.0, colour, seed), 10)]
    return clips, [0] * 30 + [1] * 30 + [2] * 30


@functools.lru_cache(maxsize=1)
def trained_tiny_model():
    """(model in eval mode, feature extractor): a 2-layer D=64 AST trained for a few seconds on speech / tone /
    noise clips of 1.28 s. Shared within a test process: do not modify it."""
    from ast_hf import ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = tiny_config(num_labels=3, id2label=dict(enumerate(CLASSES)),
                         label2id={c: i for i, c in enumerate(CLASSES)},
                         problem_type="single_label_classification")
    model = ASTForAudioClassification(config)
    fe = ASTFeatureExtractor(max_length=128)
    clips, labels = _training_clips(rng)
    x = fe(clips, sampling_rate=RATE, return_tensors="pt")["input_values"]
    y = torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(50):
        index = torch.from_numpy(rng.choice(len(y), size=24, replace=False))
        loss = model(input_values=x[index], labels=y[index]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(input_values=x).logits.argmax(-1) == y).float().mean().item()
    assert accuracy > 0.9, f"the tiny model did not learn speech / tone / noise (train accuracy {accuracy:.2f})"
    return model, fe


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`ast-hf ARGV` in this process (arguments turned into strings): (exit code, stdout, stderr)."""
    from ast_hf.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@contextlib.contextmanager
def kernel_setting(monkeypatch, variable: str, choice, read: bool = False):
    """Yields force(value): sets the environment `variable` (an `AST_HF_*` kernel setting) and forgets the answers
    cached by `choice` (the `onednn` function that reads it), returning `choice()` if `read`; the answers are
    forgotten again at the end."""
    def force(value: str):
        monkeypatch.setenv(variable, value)
        choice.cache_clear()
        return choice() if read else None

    try:
        yield force
    finally:
        choice.cache_clear()


def example_script(name: str):
    """examples/<name>.py imported as a module (the example scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tone_or_noise(rng: np.random.Generator, tonal: bool, seconds: float = 0.5) -> np.ndarray:
    """A float32 clip at RATE: a sine of random pitch (300-900 Hz) or white noise, amplitude 0.3."""
    t = np.arange(round(seconds * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(300, 900) * t) if tonal else 0.3 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def word_folders(root: Path) -> Path:
    """An audiofolder at `root` with two of the Speech Commands labels, "yes" (tones) and "no" (noise bursts):
    train/ with 4 clips of each, test/ with 2."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for label in ("yes", "no"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                sf.write(root / split / label / f"{i}.wav", tone_or_noise(rng, label == "yes"), RATE)
    return root
