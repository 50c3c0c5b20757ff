"""Statistics of each augmentation: mask widths and positions, lambda ~ Beta(10, 10), label mixing, noise, shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from ast_hf.training.augment import feature_noise, mix_targets, mix_waveforms, sample_mixup, spec_augment, time_shift


def _bands(mask_1d: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous runs of True as (start, width)."""
    idx = torch.nonzero(mask_1d).flatten().tolist()
    runs, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k == len(idx) - 1 or idx[k + 1] != i + 1:
            runs.append((start, i - start + 1))
            start = None
    return runs


def _widths(masked: torch.Tensor, axis: int) -> np.ndarray:
    """Masked cells [B, T, F] -> number of fully masked rows along `axis` (1 = time frames, 2 = mel bins)."""
    full = masked.all(dim=3 - axis)  # a frequency mask covers every frame of its bins and vice versa
    return full.sum(dim=1).numpy()


def test_spec_augment_one_band_each_of_uniform_width():
    torch.manual_seed(0)
    batch, frames, bins, freqm, timem = 3000, 100, 128, 24, 48
    out = spec_augment(torch.ones(batch, frames, bins), freqm, timem, mask_value=-7.0)
    masked = out == -7.0
    assert set(out.unique().tolist()) <= {1.0, -7.0}
    f_width, t_width = _widths(masked, 2), _widths(masked, 1)
    for b in range(50):  # a single contiguous band on each axis
        assert len(_bands(masked[b].all(dim=0))) <= 1 and len(_bands(masked[b].all(dim=1))) <= 1
    # Widths uniform on 0..freqm-1 (torchaudio's floor(U * m)): every width seen, none larger, flat histogram.
    for width, m in ((f_width, freqm), (t_width, timem)):
        assert width.max() == m - 1 and width.min() == 0
        hist = np.bincount(width, minlength=m) / batch
        assert np.abs(hist - 1 / m).max() < 5 * np.sqrt((1 / m) / batch)  # 5 binomial sd
        assert width.mean() == pytest.approx((m - 1) / 2, abs=0.05 * m)
    # Independent per clip and per axis.
    assert abs(np.corrcoef(f_width, t_width)[0, 1]) < 0.06
    # Every mel bin but the last can be masked: torchaudio's mask end floor(start) + floor(width) never
    # reaches the last index, a quirk the authors' recipe shares.
    reach = masked.all(dim=1).any(dim=0)
    assert reach[:-1].all() and not reach[-1]


def test_spec_augment_matches_the_authors_per_clip_masking_in_distribution():
    # The authors' path: torchaudio.transforms.FrequencyMasking(freqm) applied to one [1, F, T] clip at a time.
    torch.manual_seed(1)
    freqm, batch = 24, 3000
    theirs = []
    for _ in range(batch):
        clip = torchaudio.transforms.FrequencyMasking(freqm)(torch.ones(1, 128, 100))
        theirs.append(int((clip[0, :, 0] == 0).sum()))
    ours = _widths(spec_augment(torch.ones(batch, 100, 128), freqm, 0) == 0, 2)
    theirs_hist = np.bincount(theirs, minlength=freqm) / batch
    ours_hist = np.bincount(ours, minlength=freqm) / batch
    assert np.abs(np.cumsum(theirs_hist) - np.cumsum(ours_hist)).max() < 0.05  # two-sample KS, n = 3000 each


def test_spec_augment_zero_widths_is_identity_and_rejects_bad_shapes():
    x = torch.randn(2, 50, 64)
    assert torch.equal(spec_augment(x, 0, 0), x)
    with pytest.raises(ValueError, match="batch, frames, mel bins"):
        spec_augment(x[0], 4, 4)


def test_mixup_lambda_is_beta_10_10_and_prob_is_respected():
    from scipy.stats import beta, kstest

    torch.manual_seed(2)
    partner, lam = sample_mixup(40000, prob=1.0)
    assert kstest(lam.numpy(), beta(10, 10).cdf).statistic < 0.01
    assert lam.mean().item() == pytest.approx(0.5, abs=0.003)
    assert lam.var().item() == pytest.approx(100 / (400 * 21), rel=0.03)
    # Partners uniform over the batch.
    counts = np.bincount(partner.numpy(), minlength=40000)
    assert counts.sum() == 40000 and counts.max() < 12
    partner, lam = sample_mixup(20000, prob=0.6)
    mixed = lam < 1.0
    assert mixed.float().mean().item() == pytest.approx(0.6, abs=0.015)
    assert torch.equal(partner[~mixed], torch.arange(20000)[~mixed])


def test_label_mixing():
    targets = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 1.0]])
    partner = torch.tensor([1, 1, 0])
    lam = torch.tensor([0.3, 1.0, 0.6])
    mixed = mix_targets(targets, partner, lam)
    expected = torch.tensor([[0.3, 0.7, 0.0], [0, 1.0, 0], [1.0, 0, 0.6]])  # a shared label keeps weight 1
    torch.testing.assert_close(mixed, expected)
    assert torch.allclose(mix_targets(torch.eye(3), torch.tensor([2, 0, 1]), torch.tensor([0.7, 0.5, 0.9])).sum(1),
                          torch.ones(3))


def test_waveform_mixing_pads_and_cuts_the_partner():
    a, b = torch.arange(1.0, 6.0), torch.full((3,), 10.0)
    out = mix_waveforms([a, b], torch.tensor([1, 0]), torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(out[0], 0.25 * a + 0.75 * torch.tensor([10.0, 10, 10, 0, 0]))
    torch.testing.assert_close(out[1], 0.5 * b + 0.5 * a[:3])
    longer = mix_waveforms([a, b], torch.tensor([1, 0]), torch.tensor([0.25, 0.5]), pad_to_longer=True)
    torch.testing.assert_close(longer[0], out[0])  # the partner is shorter: as before
    torch.testing.assert_close(longer[1], 0.5 * torch.tensor([10.0, 10, 10, 0, 0]) + 0.5 * a)  # nothing cut


def test_feature_noise_level_and_time_shift_range():
    torch.manual_seed(3)
    noise = feature_noise(torch.zeros(5000, 20, 8))
    assert noise.min() >= 0 and noise.max() < 0.1
    # E[U * U' / 10] = 0.025; the per-clip level is shared by all cells of a clip.
    assert noise.mean().item() == pytest.approx(0.025, abs=0.001)
    per_clip_max = noise.amax(dim=(1, 2))
    assert per_clip_max.std() > 0.02  # levels differ between clips
    ramp = torch.arange(30.0).view(1, 30, 1).expand(4000, 30, 2)
    shifted = time_shift(ramp, max_shift=10)
    shifts = ((-shifted[:, 0, 0]) % 30).long()  # roll by s puts frame (-s mod 30) first
    shifts = torch.where(shifts > 15, shifts - 30, shifts)
    assert shifts.min() == -10 and shifts.max() == 9
    assert len(shifts.unique()) == 20
    assert torch.equal(torch.sort(shifted, dim=1).values, ramp)  # a roll only permutes frames
