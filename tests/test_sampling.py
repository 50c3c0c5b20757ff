"""Balanced-sampler weights against a direct transcription of the authors' `gen_weight_file`."""

from __future__ import annotations

import numpy as np
import pytest

from ast_hf.training.sampling import balanced_sample_weights, balanced_sampler


def _authors_weights(label_strings: list[str], index: dict[str, int], num_labels: int) -> np.ndarray:
    # egs/audioset/gen_weight_file.py, loop for loop: counts per label, 1000 / (count + 0.01), summed per clip.
    label_count = np.zeros(num_labels)
    for labels in label_strings:
        for label in labels.split(","):
            label_count[index[label]] += 1
    label_weight = 1000.0 / (label_count + 0.01)
    sample_weight = np.zeros(len(label_strings))
    for i, labels in enumerate(label_strings):
        for label in labels.split(","):
            sample_weight[i] += label_weight[index[label]]
    return sample_weight


def test_weights_match_the_authors_formula():
    rng = np.random.default_rng(0)
    names = [f"/m/{i:03d}" for i in range(12)]
    index = {name: i for i, name in enumerate(names)}
    clips = [",".join(rng.choice(names, size=rng.integers(1, 4), replace=False, p=np.r_[[0.3] * 2, [0.04] * 10]))
             for _ in range(500)]
    expected = _authors_weights(clips, index, len(names))
    as_lists = [[index[x] for x in c.split(",")] for c in clips]
    np.testing.assert_allclose(balanced_sample_weights(as_lists, len(names)), expected, rtol=1e-12)
    multi_hot = np.zeros((len(clips), len(names)), dtype=np.float32)
    for i, row in enumerate(as_lists):
        multi_hot[i, row] = 1
    np.testing.assert_allclose(balanced_sample_weights(multi_hot, len(names)), expected, rtol=1e-12)


def test_known_small_case_and_single_label():
    # label 0 seen 3 times, label 1 once: w0 = 1000/3.01, w1 = 1000/1.01
    w = balanced_sample_weights([0, 0, 0, 1], 2)
    np.testing.assert_allclose(w, [1000 / 3.01] * 3 + [1000 / 1.01])
    w = balanced_sample_weights([[0, 1], [0]], 2)
    np.testing.assert_allclose(w, [1000 / 2.01 + 1000 / 1.01, 1000 / 2.01])


def test_sampler_draws_rare_labels_as_often_as_common_ones():
    labels = [0] * 90 + [1] * 10
    sampler = balanced_sampler(labels, 2, num_samples=20000, seed=0)
    drawn = np.array(labels)[list(sampler)]
    assert abs(drawn.mean() - 0.5) < 0.02  # each class ~half of the draws (binomial sd 0.0035)
    again = list(balanced_sampler(labels, 2, num_samples=50, seed=0))
    assert again == list(balanced_sampler(labels, 2, num_samples=50, seed=0))


def test_bad_labels():
    with pytest.raises(ValueError, match="clip 1 has label index 5"):
        balanced_sample_weights([0, 5], 3)
    with pytest.raises(ValueError, match="empty"):
        balanced_sample_weights([], 3)


def test_integer_multi_hot_rows_are_read_as_multi_hot():
    rows = [[0, 1, 0, 1], [1, 0, 0, 0], [1, 1, 0, 0]]  # e.g. a Sequence(Value("int64")) column
    as_indices = [[1, 3], [0], [0, 1]]
    expected = balanced_sample_weights(as_indices, 4)
    np.testing.assert_allclose(balanced_sample_weights(rows, 4), expected, rtol=1e-12)
    np.testing.assert_allclose(balanced_sample_weights(np.array(rows, dtype=np.float32), 4), expected, rtol=1e-12)
    np.testing.assert_allclose(balanced_sample_weights(rows, 4, multi_hot=True), expected, rtol=1e-12)
    # With 2 classes [0, 1] reads both ways: alone it is refused, beside a clear row it takes that row's form.
    with pytest.raises(ValueError, match="read both as class indices and as multi-hot rows of 2.*multi_hot="):
        balanced_sample_weights([[0, 1], [1, 0]], 2)
    np.testing.assert_allclose(balanced_sample_weights([[0, 1], [1, 0]], 2, multi_hot=False), [2000 / 2.01] * 2)
    np.testing.assert_allclose(balanced_sample_weights([[0, 1], [1, 0]], 2, multi_hot=True), [1000 / 1.01] * 2)
    np.testing.assert_allclose(balanced_sample_weights([[0, 1], [1, 1]], 2), [1000 / 2.01, 1000 / 1.01 + 1000 / 2.01])


def test_bad_label_rows_are_named():
    with pytest.raises(ValueError, match=r"mix multi-hot rows \(clip 0\) and class indices \(clip 1\)"):
        balanced_sample_weights([[0, 1, 0, 1], [2, 3]], 4)
    with pytest.raises(ValueError, match="clip 1 lists label index 2 more than once"):
        balanced_sample_weights([[0], [2, 2, 1]], 4, multi_hot=False)
    with pytest.raises(ValueError, match=r"clip 0 has the multi-hot row \[0.5, 1.0, 0.0\], whose values are not"):
        balanced_sample_weights([[0.5, 1.0, 0.0]], 3)
    with pytest.raises(ValueError, match="clip 0 has 2 label values, not a multi-hot row of 3"):
        balanced_sample_weights([[0, 1]], 3, multi_hot=True)
    with pytest.raises(ValueError, match=r"clip 0 has labels \[1.5\] \(float64\), not class indices"):
        balanced_sample_weights([[1.5]], 3)



@pytest.mark.parametrize("labels, multi_hot", [([[], [], []], False), ([[0.0, 0.0], [0.0, 0.0]], True)])
def test_labels_without_a_positive_are_refused(labels, multi_hot):
    # every weight 0: WeightedRandomSampler failed at its first draw ("invalid multinomial distribution")
    with pytest.raises(ValueError, match="none of the .* clips has a label .* nothing to draw"):
        balanced_sampler(labels, 2, seed=0, multi_hot=multi_hot)
    assert len(list(balanced_sampler([[], [1]], 2, seed=0, multi_hot=False))) == 2  # one is enough
