"""Evaluation metrics of the AST papers, computed offline with numpy: accuracy, mAP, mean AUC, d-prime.

Everything takes `scores` [clips, classes] (logits or probabilities: every metric here depends only on their
order within a class, except accuracy, which takes the arg-max) and `targets`, either class indices [clips]
or 0/1 (multi-hot, one-hot, or soft mixup targets thresholded at 0.5) [clips, classes].

* average precision per class: the area under the precision-recall curve as a step function, i.e.
  sum_k (R_k - R_{k-1}) P_k over distinct score thresholds (tied scores form one threshold), the definition
  of scikit-learn's `average_precision_score`;
* ROC AUC per class: the Mann-Whitney probability that a positive clip outscores a negative one, ties counting
  one half (equal to the trapezoidal ROC area of `roc_auc_score`);
* mAP and mean AUC are the means over classes that have at least one positive clip (and, for AUC, one
  negative); classes without are left out, and `num_classes_scored` says how many were kept;
* d-prime = sqrt(2) * Phi^-1(mean AUC), as the authors report it.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def _as_multi_hot(targets, num_classes: int) -> np.ndarray:
    """Class indices [N] or 0/1 (soft) targets [N, C] -> bool [N, C]."""
    targets = np.asarray(targets)
    if targets.ndim not in (1, 2):
        raise ValueError(f"targets must be class indices [clips] or 0/1 targets [clips, classes], got shape "
                         f"{targets.shape}")
    if not np.isfinite(targets.astype(np.float64)).all():
        raise ValueError("targets contain NaN or infinite values")
    if targets.ndim == 1:
        if targets.size and not np.array_equal(targets, np.round(targets)):
            raise ValueError("class indices must be whole numbers; give 0/1 targets as [clips, classes]")
        if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"class indices must lie in [0, {num_classes}), got {targets.min()}..{targets.max()}")
        hot = np.zeros((targets.shape[0], num_classes), dtype=bool)
        hot[np.arange(targets.shape[0]), targets.astype(np.int64)] = True
        return hot
    if targets.shape[1] != num_classes:
        raise ValueError(f"targets have {targets.shape[1]} columns but scores have {num_classes} classes")
    return targets > 0.5


def _check(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [clips, classes], got shape {scores.shape}")
    if len(np.asarray(targets)) != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} rows of scores but {len(np.asarray(targets))} targets")
    if scores.shape[0] == 0:
        raise ValueError("no clips to score: the evaluation set is empty")
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores).all(axis=1))
        raise ValueError(f"scores contain NaN or infinite values (rows {bad[:5].tolist()})")
    return scores, _as_multi_hot(targets, scores.shape[1])


def accuracy(scores, targets) -> float:
    """Fraction of clips whose highest-scoring class is the target (for one-hot / soft targets: its arg-max)."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    truth = targets if targets.ndim == 1 else targets.argmax(axis=1)
    return float(np.mean(scores.argmax(axis=1) == truth))


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of one class: scores [N], positives bool [N] (at least one True)."""
    order = np.argsort(-scores, kind="mergesort")
    scores, positives = scores[order], positives[order]
    # The last index of each run of tied scores is one threshold.
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_pos = np.cumsum(positives)[last]
    precision = true_pos / (last + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends averaged
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of one class: scores [N], positives bool [N] with both classes present."""
    num_pos = int(positives.sum())
    num_neg = positives.size - num_pos
    rank_sum = _average_ranks(scores)[positives].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def d_prime(auc: float) -> float:
    """sqrt(2) * Phi^-1(AUC): the separation, in standard deviations, of two unit Gaussians with this AUC."""
    if auc <= 0.0:
        return -math.inf
    if auc >= 1.0:
        return math.inf
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def classification_metrics(scores, targets) -> dict[str, float]:
    """accuracy, mAP, mean AUC, d-prime and `num_classes_scored` for scores [N, C] and targets [N] or [N, C].

    Per-class AP needs one positive clip; per-class AUC needs one positive and one negative. Classes without
    are left out of the means (none left: the mean is NaN).
    """
    raw_targets = np.asarray(targets)
    scores, hot = _check(scores, targets)
    aps, aucs = [], []
    for k in range(scores.shape[1]):
        num_pos = int(hot[:, k].sum())
        if num_pos == 0:
            continue
        aps.append(average_precision(scores[:, k], hot[:, k]))
        if num_pos < hot.shape[0]:
            aucs.append(roc_auc(scores[:, k], hot[:, k]))
    mean_auc = float(np.mean(aucs)) if aucs else math.nan
    return {
        "accuracy": accuracy(scores, raw_targets),
        "mAP": float(np.mean(aps)) if aps else math.nan,
        "mAUC": mean_auc,
        "d_prime": d_prime(mean_auc) if aucs else math.nan,
        "num_classes_scored": len(aps),
    }


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for `transformers.Trainer`: accuracy, mAP, mAUC and d_prime of an `EvalPrediction`.

    The predictions are the model's logits [N, C]; the label ids class indices [N] or targets [N, C]. With a
    frame head both come as tuples (clip first, then frames); the clip-level pair is scored.
    """
    logits, label_ids = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if isinstance(label_ids, (tuple, list)):
        label_ids = label_ids[0]
    return classification_metrics(logits, label_ids)


def metric_path() -> str:
    """Folder of the `evaluate` module shipped with ast-hf: `evaluate.load(metric_path())` works offline."""
    from pathlib import Path

    return str(Path(__file__).resolve().parent / "ast_metrics")


__all__ = ["accuracy", "average_precision", "roc_auc", "d_prime", "classification_metrics", "compute_metrics",
           "metric_path"]
