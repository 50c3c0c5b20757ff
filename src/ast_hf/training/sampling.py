"""Balanced sampling for multi-label data, as the AST authors train on full AudioSet.

A label seen `count` times gets weight 1000 / (count + 0.01); a clip's weight is the sum of its labels'
weights, so clips carrying rare labels are drawn more often. Clips are then drawn with replacement,
as many per epoch as the data set holds (`torch.utils.data.WeightedRandomSampler`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


def _label_lists(labels: Iterable, num_labels: int) -> list[list[int]]:
    """Each clip's labels as a list of class indices: accepts an index, a list of indices, or a 0/1 row."""
    out = []
    for i, item in enumerate(labels):
        if isinstance(item, (int, np.integer)):
            indices = [int(item)]
        else:
            row = np.asarray(item)
            if row.ndim == 1 and row.size == num_labels and row.dtype.kind in "fb":
                indices = np.flatnonzero(row > 0.5).tolist()  # a multi-hot row
            else:
                indices = [int(x) for x in row.reshape(-1)]
        bad = [x for x in indices if not 0 <= x < num_labels]
        if bad:
            raise ValueError(f"clip {i} has label index {bad[0]}, outside [0, {num_labels}); check the label map")
        out.append(indices)
    return out


def balanced_sample_weights(labels: Sequence, num_labels: int) -> np.ndarray:
    """Per-clip sampling weights [clips] = sum over the clip's labels of 1000 / (label count + 0.01).

    Args:
        labels: one entry per clip: a class index, a list of class indices, or a multi-hot row [num_labels].
        num_labels: number of classes.
    """
    lists = _label_lists(labels, num_labels)
    if not lists:
        raise ValueError("no clips to weight: the training set is empty")
    counts = np.zeros(num_labels)
    for indices in lists:
        np.add.at(counts, indices, 1.0)
    label_weight = 1000.0 / (counts + 0.01)
    return np.array([label_weight[indices].sum() for indices in lists])


def balanced_sampler(labels: Sequence, num_labels: int, num_samples: int | None = None,
                     seed: int | None = None) -> torch.utils.data.WeightedRandomSampler:
    """A `WeightedRandomSampler` over `balanced_sample_weights`, drawing `num_samples` (default: all) clips
    with replacement per epoch. With a `seed`, every process of a distributed run draws the same sequence,
    which `accelerate` then splits between them."""
    weights = torch.as_tensor(balanced_sample_weights(labels, num_labels), dtype=torch.double)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples or len(weights), replacement=True,
                                                  generator=generator)


__all__ = ["balanced_sample_weights", "balanced_sampler"]
