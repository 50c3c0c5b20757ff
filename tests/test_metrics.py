"""The AST metrics against scikit-learn and scipy (independent implementations) on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from ast_hf.training import metrics as M


def _multilabel_case(seed=0, clips=200, classes=7, ties=True):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(clips, classes))
    if ties:  # rounding makes many tied scores, the hard case for both AP and AUC
        scores = np.round(scores, 1)
    targets = (rng.random((clips, classes)) < 0.3).astype(np.float32)
    targets[0, :] = 1.0  # every class has a positive
    targets[1, :] = 0.0  # and a negative
    return scores, targets


@pytest.mark.parametrize("ties", [False, True])
def test_per_class_ap_and_auc_match_sklearn(ties):
    scores, targets = _multilabel_case(ties=ties)
    for k in range(scores.shape[1]):
        positives = targets[:, k] > 0.5
        assert M.average_precision(scores[:, k], positives) == pytest.approx(
            average_precision_score(targets[:, k], scores[:, k]), abs=1e-12)
        assert M.roc_auc(scores[:, k], positives) == pytest.approx(roc_auc_score(targets[:, k], scores[:, k]),
                                                                   abs=1e-12)


def test_classification_metrics_multilabel_vs_sklearn():
    scores, targets = _multilabel_case(seed=1)
    out = M.classification_metrics(scores, targets)
    assert out["mAP"] == pytest.approx(average_precision_score(targets, scores, average="macro"), abs=1e-12)
    assert out["mAUC"] == pytest.approx(roc_auc_score(targets, scores, average="macro"), abs=1e-12)
    assert out["num_classes_scored"] == scores.shape[1]


def test_classes_without_positives_are_left_out():
    scores, targets = _multilabel_case(seed=2)
    targets[:, 3] = 0.0  # class 3 never occurs
    out = M.classification_metrics(scores, targets)
    keep = [k for k in range(targets.shape[1]) if k != 3]
    assert out["num_classes_scored"] == len(keep)
    assert out["mAP"] == pytest.approx(average_precision_score(targets[:, keep], scores[:, keep]), abs=1e-12)


def test_single_label_indices_accuracy_and_one_vs_rest():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, size=300)
    labels[:5] = np.arange(5)
    scores = rng.normal(size=(300, 5)) + 1.5 * np.eye(5)[labels]  # informative, imperfect
    out = M.classification_metrics(scores, labels)
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, scores.argmax(1)), abs=0)
    one_hot = np.eye(5)[labels]
    assert out["mAP"] == pytest.approx(average_precision_score(one_hot, scores), abs=1e-12)
    assert out["mAUC"] == pytest.approx(roc_auc_score(one_hot, scores), abs=1e-12)
    # Soft (mixup) targets give the same numbers as their hard version.
    soft = 0.8 * one_hot + 0.2 * np.roll(one_hot, 1, axis=1)
    assert M.classification_metrics(scores, soft) == pytest.approx(out)


def test_d_prime_vs_scipy():
    from scipy.stats import norm

    for auc in (0.5, 0.6, 0.9, 0.99, 0.123):
        assert M.d_prime(auc) == pytest.approx(math.sqrt(2) * norm.ppf(auc), abs=1e-10)
    assert M.d_prime(1.0) == math.inf
    scores, targets = _multilabel_case(seed=4)
    out = M.classification_metrics(scores, targets)
    assert out["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(out["mAUC"]), abs=1e-10)


def test_compute_metrics_for_trainer():
    from transformers import EvalPrediction

    scores, targets = _multilabel_case(seed=5)
    out = M.compute_metrics(EvalPrediction(predictions=(scores, None), label_ids=targets))
    assert out["mAP"] == pytest.approx(average_precision_score(targets, scores), abs=1e-12)


def test_bad_inputs_raise_clearly():
    with pytest.raises(ValueError, match="class indices must lie in"):
        M.classification_metrics(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="evaluation set is empty"):
        M.classification_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="columns"):
        M.classification_metrics(np.zeros((2, 3)), np.zeros((2, 4)))


def test_evaluate_module_loads_offline():
    import evaluate

    scores, targets = _multilabel_case(seed=6, clips=60, classes=4)
    multilabel = evaluate.load(M.metric_path(), "multilabel")
    out = multilabel.compute(predictions=scores.astype(np.float32), references=targets)
    assert out["mAP"] == pytest.approx(average_precision_score(targets, scores), abs=1e-6)
    labels = targets.argmax(1)
    single = evaluate.load(M.metric_path())
    out = single.compute(predictions=scores.astype(np.float32), references=labels)
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, scores.argmax(1)))


def test_nan_scores_and_malformed_targets_are_refused():
    scores = np.array([[0.1, 0.9], [0.3, 0.2]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        M.classification_metrics(np.array([[np.nan, 0.9], [0.3, 0.2]]), np.array([1, 0]))
    with pytest.raises(ValueError, match="whole numbers"):
        M.classification_metrics(scores, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 1\)"):
        M.classification_metrics(scores, np.zeros((2, 2, 1)))
    assert M.classification_metrics(scores, np.array([1.0, 0.0]))["accuracy"] == 1.0  # whole floats still work
