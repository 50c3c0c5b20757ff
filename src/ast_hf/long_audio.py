"""Tagging recordings of any length with sliding windows.

A recording is decoded block by block by `audio_io` (the one decoder), resampled to the feature extractor's
rate, cut into windows of `window` seconds every `hop` seconds, and the
windows are featurised and scored in batches. Only one batch of windows plus one decoded block is held at a
time, so memory stays flat however long the recording is.

Windows start at 0, hop, 2 hop, ...; when the last of them stops short of the end, one more window is aligned
to the end of the recording, so every sample is seen and every window has the same length. Windows shorter
than the model's `max_length` frames are padded to it, as the released models saw short clips in training.
The result holds the per-window scores (a timeline with start/end times), clip-level scores (mean or max over
windows), and a time-downsampled spectrogram for the plot.
"""

from __future__ import annotations

import csv
import math
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic_io import atomic_path
from .audio_io import audio_blocks
from .inference import (
    apply_activation,
    featurize,
    label_names,
    model_device_dtype,
    resolve_activation,
    run_model,
    select_top,
)

DEFAULT_HOP_SECONDS = 5.0
FRAME_SHIFT_SECONDS = 0.01  # one feature frame every 10 ms


# --------------------------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------------------------


def window_samples(window: float | None, hop: float | None, sampling_rate: int, max_length: int
                   ) -> tuple[int, int, bool]:
    """Window and hop in samples from seconds; (window, hop, a recording may be shorter than the window).

    `window=None` is the model's input length (`max_length` frames x 10 ms: 10.24 s for the released AudioSet
    models) and then a shorter recording is scored whole; an explicit window longer than the recording is an error.
    `hop=None` is min(5 s, window / 2); a hop longer than the window (gaps no window sees) is an error.
    """
    allow_shorter = window is None
    if window is None:
        window = max_length * FRAME_SHIFT_SECONDS
    # numbers.Real: numpy's scalars too (a window read from an array or a config is often an np.float32)
    if isinstance(window, bool) or not (isinstance(window, numbers.Real) and math.isfinite(window) and window > 0):
        raise ValueError(f"window must be a positive number of seconds, got {window!r}")
    if hop is None:
        hop = min(DEFAULT_HOP_SECONDS, window / 2)
    if isinstance(hop, bool) or not (isinstance(hop, numbers.Real) and math.isfinite(hop) and hop > 0):
        raise ValueError(f"hop must be a positive number of seconds (the step between window starts), got {hop!r}")
    win, step = round(float(window) * sampling_rate), round(float(hop) * sampling_rate)
    if step < 1:
        raise ValueError(f"hop {hop} s is shorter than one sample at {sampling_rate} Hz")
    if step > win:
        raise ValueError(f"hop {hop:g} s is longer than the window {window:g} s: it would leave gaps between the "
                         f"windows, audio that is never scored; give a hop of at most the window")
    return win, step, allow_shorter


def window_starts(total: int, window: int, hop: int, allow_shorter: bool = False) -> list[int]:
    """Start samples of the windows covering `total` samples: 0, hop, 2 hop, ..., plus one aligned to the end
    when the regular ones stop short of it. A recording shorter than the window gives [0] (one shorter window)
    when `allow_shorter`, else a ValueError."""
    if total <= 0:
        raise ValueError("the recording holds no samples (zero-length)")
    if total < window:
        if not allow_shorter:
            raise ValueError(f"the window ({window} samples) is longer than the recording ({total} samples)")
        return [0]
    starts = list(range(0, total - window + 1, hop))
    if starts[-1] + window < total:
        starts.append(total - window)
    return starts


def iter_windows(blocks: Iterable[np.ndarray], window: int, hop: int, allow_shorter: bool = False,
                 sampling_rate: int = 16000, name: str = "the recording") -> Iterator[tuple[int, np.ndarray]]:
    """Stream (start sample, window [samples]) pairs out of consecutive blocks, holding at most one window plus
    one block. Yields exactly the windows of `window_starts(total, window, hop, allow_shorter)`."""
    buffer = np.zeros(0, np.float32)
    buffer_start = total = covered = next_start = 0
    for block in blocks:
        buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32)])
        total += len(block)
        while next_start + window <= total:
            offset = next_start - buffer_start
            yield next_start, buffer[offset:offset + window].copy()
            covered = next_start + window
            next_start += hop
        keep_from = min(next_start, total - window)  # the next window, or one aligned to a possible end
        if keep_from > buffer_start:
            buffer = buffer[keep_from - buffer_start:]
            buffer_start = keep_from
    if total == 0:
        raise ValueError(f"{name} holds no audio samples (zero-length recording)")
    if covered == 0:
        if not allow_shorter:
            raise ValueError(
                f"the window ({window / sampling_rate:g} s) is longer than {name} ({total / sampling_rate:.3f} s); "
                f"pass a shorter window, or none to score a short recording whole")
        yield 0, buffer[:total].copy()
    elif covered < total:
        start = total - window
        yield start, buffer[start - buffer_start:].copy()


def batched(iterable: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` (>= 1) items (the last may be shorter). A size below 1 raises `ValueError` on
    the first item asked for: it would otherwise make one batch of everything, unbounded in memory."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def default_windows_per_call(config, device: torch.device, dtype: torch.dtype = torch.float32) -> int:
    """Windows scored per model call by default. On a CPU the encoder takes `onednn.cpu_tokens_per_call(dtype)`
    tokens at a time whatever the batch (two 10.24 s windows in float32, four in bf16), so larger calls would only
    hold more memory, and the peak stays that of one such group however long the recording; on a GPU batching
    pays: 8."""
    from .onednn import cpu_tokens_per_call

    if torch.device(device).type != "cpu" or not hasattr(config, "patch_grid"):  # a GPU, or transformers' AST
        return 8
    f, t = config.patch_grid()
    return max(1, cpu_tokens_per_call(dtype) // (config.num_prefix_tokens + f * t))


# --------------------------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TimelineRow:
    """One label of one window: `start`/`end` in seconds, `rank` 1 = the window's best label."""

    window: int
    start: float
    end: float
    rank: int
    label: str
    score: float


class _SpectrogramSketch:
    """Time-downsampled log-mel of a stream: frames averaged in groups of `pool`, `pool` doubled whenever the
    columns exceed `max_columns`, so its size is bounded whatever the recording's length."""

    def __init__(self, max_columns: int = 2000):
        self.max_columns = max_columns
        self.pool = 1
        self.columns: list[np.ndarray] = []  # [k, mel bins] pieces
        self._partial: np.ndarray | None = None  # frames not yet pooled

    def add(self, frames: np.ndarray) -> None:
        """frames: [n, mel bins]."""
        if not len(frames):
            return
        self._partial = frames if self._partial is None else np.concatenate([self._partial, frames])
        whole = len(self._partial) // self.pool * self.pool
        if whole:
            self.columns.append(self._partial[:whole].reshape(-1, self.pool, frames.shape[1]).mean(axis=1))
            self._partial = self._partial[whole:]
        if sum(len(c) for c in self.columns) > self.max_columns:
            columns = np.concatenate(self.columns)
            even = len(columns) // 2 * 2
            self.columns = [columns[:even].reshape(-1, 2, columns.shape[1]).mean(axis=1)]
            # An odd last column goes back as `pool` copies of itself: the next column's mean stays exact.
            self._partial = np.concatenate([np.repeat(columns[even:], self.pool, axis=0), self._partial])
            self.pool *= 2

    def array(self) -> np.ndarray:
        """[mel bins, columns]; each column spans `pool` frames (pool x 10 ms)."""
        pieces = list(self.columns)
        if self._partial is not None and len(self._partial):
            pieces.append(self._partial.mean(axis=0, keepdims=True))
        return np.concatenate(pieces).T if pieces else np.zeros((0, 0), np.float32)


@dataclass
class LongAudioTags:
    """Sliding-window tags of one recording.

    Attributes:
        labels: label names, one per model output.
        starts, ends: [windows] window start and end times in seconds.
        scores: [windows, labels] per-window scores (after `activation`).
        clip_scores: [labels] scores of the whole recording: `aggregate` ("mean" or "max") over windows.
        duration: length of the recording in seconds.
        spectrogram: [mel bins, columns] normalised log-mel, averaged over `spectrogram_hop` seconds per column.
    """

    labels: list[str]
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    clip_scores: np.ndarray
    duration: float
    aggregate: str = "mean"
    activation: str = "sigmoid"
    spectrogram: np.ndarray | None = None
    spectrogram_hop: float = FRAME_SHIFT_SECONDS
    extra: dict = field(default_factory=dict)

    def top(self, k: int | None = 5, threshold: float | None = None) -> list[tuple[str, float]]:
        """Clip-level (label, score), best first: the `k` best (None or 0: all), those >= `threshold` only."""
        return select_top(self.clip_scores, self.labels, k, threshold)

    def timeline(self, top_k: int | None = 3, threshold: float | None = None) -> list[TimelineRow]:
        """Per-window rows: each window's `top_k` labels (None or 0: all), those >= `threshold` only."""
        rows = []
        for w, (start, end) in enumerate(zip(self.starts, self.ends)):
            for rank, (label, score) in enumerate(select_top(self.scores[w], self.labels, top_k, threshold), 1):
                rows.append(TimelineRow(w, float(start), float(end), rank, label, score))
        return rows

    def write_csv(self, path: str | Path, top_k: int | None = 3, threshold: float | None = None) -> Path:
        """Write the timeline as CSV (columns window,start,end,rank,label,score; seconds) atomically."""
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["window", "start", "end", "rank", "label", "score"])
            for row in self.timeline(top_k, threshold):
                writer.writerow([row.window, f"{row.start:.3f}", f"{row.end:.3f}", row.rank, row.label,
                                 f"{row.score:.6f}"])
        return Path(path)

    def plot(self, path: str | Path, top_k: int = 5, title: str | None = None) -> Path:
        """PNG: the `top_k` clip-level labels' scores over time (a heat map) above the spectrogram."""
        from .plotting import plot_timeline

        return plot_timeline(self, path, top_k=top_k, title=title)


def aggregate_scores(scores: np.ndarray, aggregate: str) -> np.ndarray:
    """[windows, labels] -> [labels] by "mean" or "max" over windows."""
    if aggregate == "mean":
        return scores.mean(axis=0)
    if aggregate == "max":
        return scores.max(axis=0)
    raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")


# --------------------------------------------------------------------------------------------------------------
# Tagging
# --------------------------------------------------------------------------------------------------------------


def tag_long_audio(
    model,
    feature_extractor,
    audio: str | Path | np.ndarray | torch.Tensor,
    sampling_rate: int | None = None,
    window: float | None = None,
    hop: float | None = None,
    aggregate: str = "mean",
    batch_size: int | None = None,
    activation: str = "auto",
    progress: bool = True,
    allow_shorter: bool | None = None,
) -> LongAudioTags:
    """Tag a recording of any length with sliding windows.

    Args:
        model: an `ASTForAudioClassification` (or any module with `.config` whose output has `.logits`).
        feature_extractor: the model's `ASTFeatureExtractor`.
        audio: a file path (decoded in blocks, never whole) or a mono waveform [samples] with `sampling_rate` (Hz).
        window: window length in seconds; None = the model's input length (10.24 s for 1024 frames), and a
            shorter recording is then scored whole. An explicit window longer than the recording is an error.
        hop: step between window starts in seconds (default min(5 s, window / 2)); positive, at most `window`.
        aggregate: clip-level scores as the "mean" or "max" over windows.
        batch_size: windows per model call; None: `default_windows_per_call` (2 windows of 10.24 s on a CPU,
            4 in bf16, 8 on a GPU).
        activation: "auto" (sigmoid for multi-label models, softmax for single-label), "sigmoid", "softmax", "none".
        progress: show a tqdm progress bar over windows.
        allow_shorter: score a recording shorter than the window whole instead of raising (default: only when
            `window` is None).

    Returns:
        `LongAudioTags` with the per-window timeline and the clip-level scores.
    """
    aggregate_scores(np.zeros((1, 1)), aggregate)  # validate early
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    config = model.config
    batch_size = batch_size or default_windows_per_call(config, *model_device_dtype(model))
    activation = resolve_activation(config, activation)
    rate = feature_extractor.sampling_rate
    win, step, default_window = window_samples(window, hop, rate, config.max_length)
    allow_shorter = default_window if allow_shorter is None else allow_shorter
    blocks, duration, name = audio_blocks(audio, sampling_rate, rate)
    total_windows = None
    if duration is not None and duration > 0:
        total_windows = len(window_starts(max(1, round(duration * rate)), win, step, True))

    from tqdm.auto import tqdm

    sketch = _SpectrogramSketch()
    covered_frames = 0
    starts, lengths, scores = [], [], []
    bar = tqdm(total=total_windows, unit="window", desc="tagging", disable=not progress, leave=False)
    try:
        for batch in batched(iter_windows(blocks, win, step, allow_shorter, rate, name), batch_size):
            clips = [clip for _, clip in batch]
            values, mask = featurize(feature_extractor, clips, config.max_length)
            scores.append(apply_activation(run_model(model, values, mask).logits, activation))
            for (start, clip), feats in zip(batch, values.numpy()):
                first = round(start / rate / FRAME_SHIFT_SECONDS)
                real = feature_extractor.frames_for(len(clip))
                sketch.add(feats[max(0, covered_frames - first):real])
                covered_frames = max(covered_frames, first + real)
                starts.append(start)
                lengths.append(len(clip))
            bar.update(len(batch))
    finally:
        bar.close()
    starts_s = np.asarray(starts, dtype=np.float64) / rate
    ends_s = starts_s + np.asarray(lengths, dtype=np.float64) / rate
    all_scores = np.concatenate(scores, axis=0)
    return LongAudioTags(labels=label_names(config), starts=starts_s, ends=ends_s, scores=all_scores,
                         clip_scores=aggregate_scores(all_scores, aggregate), duration=float(ends_s.max()),
                         aggregate=aggregate, activation=activation, spectrogram=sketch.array(),
                         spectrogram_hop=sketch.pool * FRAME_SHIFT_SECONDS)


__all__ = ["LongAudioTags", "TimelineRow", "tag_long_audio", "iter_windows", "window_starts", "window_samples",
           "batched", "aggregate_scores", "default_windows_per_call"]
