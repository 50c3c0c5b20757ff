"""Frame-level scores: *when* each label is present, at the patch-column rate, from any AST classifier.

Method ("head on columns", no retraining). The AST's clip logits are its head (LayerNorm + Linear) applied to
the pooled output, the mean of the cls and distillation tokens after the final LayerNorm. Here the same head is
applied to each time column instead: the patch tokens of one column (after the final LayerNorm) are averaged over
the frequency patches and passed through the head, giving logits [time columns, labels], then the activation of
`inference.resolve_activation` (sigmoid for multi-label models). This is an approximation: the head was trained
on the prefix tokens, which attend to every patch, not on patch tokens. What it measures is how much the
contextualised tokens of that time column look like each label to the clip head; it locates sounds the clip
head knows, at a resolution it was never trained for. A model with a trained frame head (a config whose
`frame_head` is set and whose output carries `frame_logits` [batch, columns, labels]) is read directly instead.

Time grid. Column j of a window covers feature frames [j ts, j ts + patch_size) (ts = the time stride); its
score is reported for the time step [j hop, (j + 1) hop) with hop = ts x 10 ms (100 ms at ts = 10), the step at
which the columns advance. Only columns whose whole patch lies inside the audio are reported, so a recording of N
samples gives `patch_grid(frames(N))[1]` steps (the last ~patch_size - ts frames only feed the last column).

Long recordings. Windows of `window` seconds start at multiples of `hop` (rounded to whole columns, so every
window's columns fall on one global grid); the last one runs to the end of the recording and may be shorter (it
is padded to `max_length` frames, as in training, and only its real columns are kept). Where windows overlap, a
column is scored by the window in which it is most central (the one with the most context on both sides;
ties go to the earlier window): no averaging of differently-contextualised scores, and a column's score is
one window's forward. Windows are streamed from `audio_io` (memory flat) and scored in batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio_io import audio_blocks
from .configuration_ast import patch_shape
from .embeddings import backbone
from .inference import apply_activation, featurize, label_names, model_device_dtype, resolve_activation, run_model
from .long_audio import FRAME_SHIFT_SECONDS, _SpectrogramSketch, batched, default_windows_per_call, window_samples


@dataclass
class FrameScores:
    """Frame-level scores of one recording.

    Attributes:
        labels: label names, one per model output.
        scores: [steps, labels] float32 scores (after `activation`); row i covers [i hop, (i + 1) hop) seconds.
        hop: seconds per step (the patch-column hop, time_stride x 10 ms).
        duration: length of the recording in seconds.
        activation: the activation applied ("sigmoid", "softmax" or "none").
        spectrogram: [mel bins, columns] normalised log-mel, `spectrogram_hop` seconds per column (for plots).
    """

    labels: list[str]
    scores: np.ndarray
    hop: float
    duration: float
    activation: str
    spectrogram: np.ndarray | None = None
    spectrogram_hop: float = FRAME_SHIFT_SECONDS

    @property
    def times(self) -> np.ndarray:
        """[steps] start time of each step in seconds."""
        return np.arange(len(self.scores)) * self.hop


def column_count(config, frames: int) -> int:
    """Time columns whose whole patch lies in `frames` real feature frames (0 when shorter than one patch)."""
    patch_frames = patch_shape(config.patch_size)[1]
    if frames < patch_frames:
        return 0
    return (frames - patch_frames) // config.time_stride + 1


def has_frame_head(model) -> bool:
    """Whether the model carries a trained frame head (its config's `frame_head`), read instead of the clip head."""
    return bool(getattr(model.config, "frame_head", None))


def _column_means(model, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[n, time columns, D]: the last-layer patch tokens (after the final LayerNorm) averaged over frequency."""
    net = backbone(model)
    tokens = run_model(net, input_values, attention_mask).last_hidden_state[:, net.config.num_prefix_tokens:]
    f, t = net.config.patch_grid(input_values.shape[1])
    # Patches are ordered frequency-major (f rows of t columns).
    return tokens.reshape(tokens.shape[0], f, t, tokens.shape[-1]).mean(dim=1)


def column_logits(model, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  clip_head: bool = False) -> torch.Tensor:
    """Logits per time column of a batch: features [n, frames, mel bins] (and a [n, frames] mask) ->
    [n, time columns, labels] float32 on the CPU. Columns past a clip's real frames (see `column_count`) hold
    padding and are to be ignored. A clip gets the same logits alone as inside a padded batch.

    A model with a trained frame head is read through it, unless `clip_head` asks for the clip head on columns
    (the method without frame training, e.g. to compare the two on one model)."""
    if has_frame_head(model) and not clip_head:
        return run_model(model, input_values, attention_mask).frame_logits.float().cpu()
    head = getattr(model, "classifier", None)
    if head is None:
        raise ValueError("frame scores need a classification model (ASTForAudioClassification): this model has no "
                         "classifier head")
    columns = _column_means(model, input_values, attention_mask)
    device, dtype = model_device_dtype(model)
    with torch.inference_mode():
        return head(columns.to(device, dtype)).float().cpu()


def column_scores(model, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  activation: str = "auto", frames: list[int] | None = None, clip_head: bool = False
                  ) -> list[np.ndarray]:
    """Scores of each clip's real time columns: a list of n float32 arrays [columns_i, labels].

    `frames` [n]: each clip's real feature frames (default: from `attention_mask`, else all); a clip padded to
    `max_length` without a mask (as `inference.featurize` pads short clips) needs them to drop its padding columns.
    `clip_head`: as in `column_logits`.
    """
    activation = resolve_activation(model.config, activation)
    logits = column_logits(model, input_values, attention_mask, clip_head)
    if frames is None:
        frames = ([input_values.shape[1]] * len(logits) if attention_mask is None
                  else attention_mask.sum(dim=1).tolist())
    out = []
    for clip_logits, clip_frames in zip(logits, frames):
        kept = clip_logits[:column_count(model.config, int(clip_frames))]
        out.append(apply_activation(kept, activation))
    return out


def _aligned_windows(blocks, window: int, hop: int):
    """(start sample, clip) for windows starting at 0, hop, 2 hop, ... until one reaches the end of the stream;
    that last one is cut at the end (shorter). Holds at most one window plus one block."""
    buffer = np.zeros(0, np.float32)
    buffer_start = total = next_start = 0
    for block in blocks:
        buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32)])
        total += len(block)
        # A window is final once the sample after it exists: only then is it known not to be the last one.
        while next_start + window < total:
            yield next_start, buffer[next_start - buffer_start:next_start - buffer_start + window].copy()
            next_start += hop
        if next_start > buffer_start:
            buffer = buffer[next_start - buffer_start:]
            buffer_start = next_start
    if total and next_start < total:
        yield next_start, buffer[next_start - buffer_start:].copy()


def column_tokens(model, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  frames: list[int] | None = None) -> list[np.ndarray]:
    """Each clip's real time columns as embeddings: the patch tokens after the final LayerNorm averaged over
    frequency, a list of n float32 arrays [columns_i, D] (`frames` as in `column_scores`)."""
    columns = _column_means(model, input_values, attention_mask).float().cpu().numpy()
    if frames is None:
        frames = ([input_values.shape[1]] * len(columns) if attention_mask is None
                  else attention_mask.sum(dim=1).tolist())
    return [clip[:column_count(model.config, int(n))] for clip, n in zip(columns, frames)]


@dataclass
class StitchedColumns:
    """Per-column outputs of a whole recording: `values` [columns, ...], `hop` seconds per column, `duration`
    seconds, `spectrogram` [mel bins, columns] with `spectrogram_hop` seconds per column."""

    values: np.ndarray
    hop: float
    duration: float
    spectrogram: np.ndarray
    spectrogram_hop: float


def check_window(config, feature_extractor, window: float | None = None, hop: float | None = None
                 ) -> tuple[int, int, int]:
    """(window, hop, column hop) in samples for stitching columns, the hop rounded to whole columns; ValueError
    for a window shorter than one patch or a hop that leaves columns between windows (checked before any audio is
    read, so a command can refuse bad options once rather than once per file)."""
    rate = feature_extractor.sampling_rate
    win, step, _ = window_samples(window, hop, rate, config.max_length)
    column_hop = config.time_stride * round(FRAME_SHIFT_SECONDS * rate)  # samples per column step
    step = max(1, round(step / column_hop)) * column_hop
    window_columns = column_count(config, feature_extractor.frames_for(win))
    if window_columns == 0:
        raise ValueError(f"the window ({win / rate:g} s) is shorter than one patch "
                         f"({patch_shape(config.patch_size)[1]} frames)")
    if step // column_hop > window_columns:
        raise ValueError(f"hop ({step / rate:g} s) leaves gaps between windows of {win / rate:g} s ({window_columns} "
                         f"columns of {column_hop / rate:g} s): give a hop of at most "
                         f"{window_columns * column_hop / rate:g} s (the window's whole columns)")
    return win, step, column_hop


def stitch_columns(model, feature_extractor, audio, per_window, sampling_rate: int | None = None,
                   window: float | None = None, hop: float | None = None, batch_size: int | None = None,
                   progress: bool = True, desc: str = "columns") -> StitchedColumns:
    """Run `per_window(input_values, attention_mask, frames) -> list of [columns_i, ...]` over windows of a
    recording of any length and stitch the columns (see the module docstring: windows at whole-column hops, each
    column from the window where it is most central)."""
    config = model.config
    rate = feature_extractor.sampling_rate
    win, step, column_hop = check_window(config, feature_extractor, window, hop)
    if batch_size is not None and not batch_size >= 1:  # as tag_long_audio: 0 is not "default"
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = batch_size or default_windows_per_call(config, *model_device_dtype(model))
    blocks, duration, name = audio_blocks(audio, sampling_rate, rate)
    frame_hop = round(FRAME_SHIFT_SECONDS * rate)

    from tqdm.auto import tqdm

    sketch = _SpectrogramSketch()
    covered_frames = 0  # feature frames already in the sketch
    pieces: list[np.ndarray] = []  # consecutive runs of final step scores
    done = 0  # global columns already final
    pending: tuple[int, np.ndarray] | None = None  # (first column, scores) of the previous window, not yet final
    total = 0
    expected = None if duration is None else int(np.ceil(max(0.0, duration * rate - win) / step)) + 1
    bar = tqdm(total=expected, unit="window", desc=desc, disable=not progress, leave=False)
    try:
        for batch in batched(_aligned_windows(blocks, win, step), batch_size):
            total = batch[-1][0] + len(batch[-1][1])
            batch = [(start, clip) for start, clip in batch if len(clip) >= feature_extractor.min_samples]
            if not batch:
                continue
            values, mask = featurize(feature_extractor, [clip for _, clip in batch], config.max_length)
            frames = [feature_extractor.frames_for(len(clip)) for _, clip in batch]
            for (start, _), scores, feats, real in zip(batch, per_window(values, mask, frames),
                                                       values, frames):
                first_frame = start // frame_hop
                sketch.add(feats[max(0, covered_frames - first_frame):real].numpy())
                covered_frames = max(covered_frames, first_frame + real)
                if not len(scores):  # a last window shorter than a patch: its columns are all in the previous one
                    continue
                first = start // column_hop
                if pending is not None:
                    # Where two windows overlap, each column goes to the window in which it is most central.
                    prev_first, prev = pending
                    middle = (prev_first + len(prev) / 2 + first + len(scores) / 2) / 2
                    split = max(first, min(prev_first + len(prev), int(np.floor(middle + 0.5))))
                    pieces.append(prev[done - prev_first:split - prev_first])
                    done = split
                pending = (first, scores)
            bar.update(len(batch))
    finally:
        bar.close()
    if total == 0:
        raise ValueError(f"{name} holds no audio samples (zero-length recording)")
    if pending is None:
        patch_frames = patch_shape(config.patch_size)[1]
        raise ValueError(f"{name} ({total / rate:.3f} s) is shorter than one patch ({patch_frames} frames, "
                         f"{(patch_frames - 1) * FRAME_SHIFT_SECONDS + 0.025:.3f} s): nothing to score")
    prev_first, prev = pending
    pieces.append(prev[done - prev_first:])
    scores = np.concatenate(pieces)
    return StitchedColumns(values=scores, hop=column_hop / rate, duration=total / rate, spectrogram=sketch.array(),
                           spectrogram_hop=sketch.pool * FRAME_SHIFT_SECONDS)


def frame_scores(
    model,
    feature_extractor,
    audio: str | Path | np.ndarray | torch.Tensor,
    sampling_rate: int | None = None,
    window: float | None = None,
    hop: float | None = None,
    activation: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
) -> FrameScores:
    """Scores [steps, labels] at the patch-column rate over a recording of any length.

    Args:
        model: an `ASTForAudioClassification`.
        feature_extractor: its `ASTFeatureExtractor`.
        audio: a file path (streamed) or a mono waveform [samples] with `sampling_rate` (Hz).
        window: window length in seconds (default: the model's input length, 10.24 s for 1024 frames).
        hop: step between window starts in seconds (default min(5 s, window / 2)), rounded to whole columns.
        activation: "auto" (as the clip scores), "sigmoid", "softmax" or "none".
        batch_size: windows per model call (default as `tag_long_audio`).
        progress: show a tqdm progress bar over windows.

    Raises:
        ValueError: a recording shorter than one patch (16 frames, ~0.17 s), an empty one, NaN samples, or bad
            window/hop values.
    """
    activation = resolve_activation(model.config, activation)
    stitched = stitch_columns(model, feature_extractor, audio,
                              lambda values, mask, frames: column_scores(model, values, mask, activation, frames),
                              sampling_rate, window, hop, batch_size, progress, desc="frame scores")
    return FrameScores(labels=label_names(model.config), scores=stitched.values, hop=stitched.hop,
                       duration=stitched.duration, activation=activation, spectrogram=stitched.spectrogram,
                       spectrogram_hop=stitched.spectrogram_hop)


__all__ = ["FrameScores", "frame_scores", "column_scores", "column_logits", "column_tokens", "column_count",
           "has_frame_head", "stitch_columns", "StitchedColumns", "check_window"]
