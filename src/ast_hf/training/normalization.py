"""`compute_normalization_stats`: mean and std of a new data set's un-normalised fbank, as the authors'
`get_norm_stats.py`, written into the feature extractor (`(fbank - mean) / (2 * std)` then has mean 0 and
std 0.5 on that data).

Like the authors' loader, every clip is padded with zeros or cut to `max_length` frames before the
statistics are taken, so they describe exactly what the model is fed. The std is the pooled std over all
clips (the authors average per-batch stds over batches of 1000 clips, which is close to it but depends on the
batch size); no augmentation is applied (the authors' sample script leaves SpecAugment and mixup on, which
mixes masked zeros into the statistics).
"""

from __future__ import annotations

import math

import numpy as np

from ..feature_extraction_ast import ASTFeatureExtractor
from .data import decode_audio


def _batches(source, audio_column: str, batch_size: int, num_clips: int | None, allow_upsampling: bool,
             sampling_rate: int):
    """Waveform batches from a `datasets.Dataset` (its audio column) or any iterable of mono waveforms."""
    batch = []
    if hasattr(source, "column_names"):
        limit = len(source) if num_clips is None else min(num_clips, len(source))
        for start in range(0, limit, batch_size):
            rows = source[start:min(start + batch_size, limit)][audio_column]
            yield [decode_audio(a, sampling_rate, allow_upsampling, index=start + i) for i, a in enumerate(rows)]
        return
    for i, clip in enumerate(source):
        if num_clips is not None and i >= num_clips:
            break
        batch.append(np.asarray(clip, dtype=np.float32))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def compute_normalization_stats(source, feature_extractor: ASTFeatureExtractor, *, audio_column: str = "audio",
                                max_length: int | None = None, batch_size: int = 64, num_clips: int | None = None,
                                allow_upsampling: bool = False, update: bool = True) -> tuple[float, float]:
    """Mean and std of the un-normalised log-mel fbank over a data set.

    Args:
        source: a `datasets.Dataset` with an audio column (any rate; resampled to the extractor's), or an iterable
            of mono waveforms [samples] already at `feature_extractor.sampling_rate` Hz.
        feature_extractor: defines the fbank (mel bins, rate) and `max_length`; with `update` its `mean` and
            `std` are set to the result (save it with `save_pretrained` to write them into
            `preprocessor_config.json`).
        max_length: frames each clip is padded/cut to (default: the extractor's `max_length`).
        num_clips: use only the first `num_clips` clips.

    Returns:
        (mean, std) in natural-log mel energy.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of clips >= 1, got {batch_size!r}")
    if num_clips is not None and num_clips < 1:
        raise ValueError(f"num_clips must be >= 1 (or None: all clips), got {num_clips!r}")
    raw = ASTFeatureExtractor(**{**feature_extractor.to_dict(), "do_normalize": False})
    frames = max_length or feature_extractor.max_length
    total = total_sq = 0.0
    count = clips = 0
    from tqdm.auto import tqdm

    with tqdm(desc="normalisation statistics", unit="clip", leave=False) as bar:
        for waveforms in _batches(source, audio_column, batch_size, num_clips, allow_upsampling,
                                  feature_extractor.sampling_rate):
            feats = raw(waveforms, sampling_rate=raw.sampling_rate, padding="max_length", max_length=frames,
                        return_tensors="pt")["input_values"].double()
            total += float(feats.sum())
            total_sq += float((feats * feats).sum())
            count += feats.numel()
            clips += len(waveforms)
            bar.update(len(waveforms))
    if count < 2:
        raise ValueError("no clips to compute normalisation statistics from: the data set is empty")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0) * count / (count - 1))
    if update:
        feature_extractor.mean, feature_extractor.std = float(mean), float(std)
    return float(mean), float(std)


__all__ = ["compute_normalization_stats"]
