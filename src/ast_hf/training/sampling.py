"""Balanced sampling for multi-label data, as the AST authors train on full AudioSet.

A label seen `count` times gets weight 1000 / (count + 0.01); a clip's weight is the sum of its labels'
weights, so clips carrying rare labels are drawn more often. Clips are then drawn with replacement,
as many per epoch as the data set holds (`torch.utils.data.WeightedRandomSampler`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


def _readings(i: int, item, num_labels: int) -> tuple[list[int] | str, list[int] | str]:
    """Clip i's labels read as class indices and as a multi-hot row: each the clip's classes, or (a string) why
    the labels cannot be read that way."""
    row = np.asarray(item)
    if row.ndim > 1:
        why = f"clip {i} has labels of shape {row.shape}; give a class index, a list of them or a multi-hot row"
        return why, why
    if row.size == 0:  # no labels
        as_indices: list[int] | str = []
    elif row.dtype.kind in "iu":
        values = row.reshape(-1).tolist()
        bad = [x for x in values if not 0 <= x < num_labels]
        repeated = sorted(x for x in set(values) if values.count(x) > 1)
        as_indices = (f"clip {i} has label index {bad[0]}, outside [0, {num_labels}); check the label map" if bad
                      else f"clip {i} lists label index {repeated[0]} more than once" if repeated else values)
    else:
        as_indices = f"clip {i} has labels {row.tolist()} ({row.dtype}), not class indices (integers)"
    if row.ndim == 0:
        as_hot: list[int] | str = f"clip {i} has one label, not a multi-hot row"
    elif row.size != num_labels or row.dtype.kind not in "iufb":
        as_hot = f"clip {i} has {row.size} label values, not a multi-hot row of {num_labels}"
    elif not np.isin(row, (0, 1)).all():
        as_hot = f"clip {i} has the multi-hot row {row.tolist()}, whose values are not all 0 or 1"
    else:
        as_hot = np.flatnonzero(row).tolist()
    return as_indices, as_hot


def _label_lists(labels: Iterable, num_labels: int, multi_hot: bool | None = None) -> list[list[int]]:
    """Each clip's labels as a list of class indices (see `balanced_sample_weights`)."""
    labels_list = list(labels)
    readings = [_readings(i, item, num_labels) for i, item in enumerate(labels_list)]
    infer = multi_hot is None
    if infer:  # the labels' form, from the clips that read only one way
        only_hot = next((i for i, (a, b) in enumerate(readings) if isinstance(a, str) and not isinstance(b, str)), None)
        only_indices = next((i for i, (a, b) in enumerate(readings) if not isinstance(a, str) and isinstance(b, str)),
                            None)
        if only_hot is not None and only_indices is not None:
            raise ValueError(f"the labels mix multi-hot rows (clip {only_hot}) and class indices (clip "
                             f"{only_indices}); give every clip's labels in one form")
        both = next((i for i, (a, b) in enumerate(readings) if not isinstance(a, str) and not isinstance(b, str)),
                    None)
        if only_hot is None and only_indices is None and both is not None:
            raise ValueError(f"the labels read both as class indices and as multi-hot rows of {num_labels} (e.g. "
                             f"clip {both}: {readings[both][0]}); pass multi_hot=True or multi_hot=False")
        multi_hot = only_hot is not None
    out = []
    for item, (as_indices, as_hot) in zip(labels_list, readings):
        chosen = as_hot if multi_hot else as_indices
        if isinstance(chosen, str):
            looks_hot = np.ndim(item) == 1 and np.size(item) == num_labels
            raise ValueError(as_hot if infer and isinstance(as_indices, str) and looks_hot else chosen)
        out.append(chosen)
    return out


def balanced_sample_weights(labels: Sequence, num_labels: int, multi_hot: bool | None = None) -> np.ndarray:
    """Per-clip sampling weights [clips] = sum over the clip's labels of 1000 / (label count + 0.01).

    Args:
        labels: one entry per clip: a class index, a list of distinct class indices (integers), or a multi-hot
            row [num_labels] of 0s and 1s (ints, floats or bools). All clips' labels take the same form. A clip
            without labels gets weight 0: it is never drawn.
        num_labels: number of classes.
        multi_hot: whether the rows are multi-hot (True) or lists of class indices (False). None (default): read
            from the labels: float and bool rows, and integer rows that repeat a 0 or 1 (e.g. [0, 1, 0, 1]), are
            multi-hot; rows of another length than `num_labels` and single indices are indices. Labels that read
            both ways alone (e.g. every row [0, 1] with 2 classes) raise a `ValueError` asking for `multi_hot`,
            as do labels that mix the two forms, out-of-range or repeated indices and rows of other values, and
            labels without a single positive (nothing could be drawn).
    """
    lists = _label_lists(labels, num_labels, multi_hot)
    if not lists:
        raise ValueError("no clips to weight: the training set is empty")
    counts = np.zeros(num_labels)
    for indices in lists:
        np.add.at(counts, indices, 1.0)
    if not counts.any():  # every weight 0: the sampler would fail at its first draw, deep in the data loader
        raise ValueError(f"none of the {len(lists)} clips has a label (or, with strong labels, an event), so "
                         f"balanced sampling has nothing to draw; check the label column, or turn it off")
    label_weight = 1000.0 / (counts + 0.01)
    return np.array([label_weight[indices].sum() for indices in lists])


def balanced_sampler(labels: Sequence, num_labels: int, num_samples: int | None = None,
                     seed: int | None = None, multi_hot: bool | None = None) -> torch.utils.data.WeightedRandomSampler:
    """A `WeightedRandomSampler` over `balanced_sample_weights` (`labels`, `multi_hot` as there), drawing
    `num_samples` (default: all) clips with replacement per epoch. With a `seed`, every process of a distributed
    run draws the same sequence, which `accelerate` then splits between them."""
    weights = torch.as_tensor(balanced_sample_weights(labels, num_labels, multi_hot), dtype=torch.double)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples or len(weights), replacement=True,
                                                  generator=generator)


__all__ = ["balanced_sample_weights", "balanced_sampler"]
