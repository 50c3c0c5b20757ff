"""Training-time augmentations of the AST recipes; the collator applies them only while training.

* `spec_augment`: one frequency mask of width U{0..freqm-1} bins and one time mask of width U{0..timem-1}
  frames per clip, drawn independently for every clip (torchaudio's `FrequencyMasking` / `TimeMasking`
  with `iid_masks=True`; the authors apply the same masks one clip at a time).
* `mixup`: each clip, with probability `prob`, is mixed with a partner drawn uniformly at random,
  lambda ~ Beta(10, 10): x = lambda x_i + (1 - lambda) x_j (the partner zero-padded or cut to x_i's length; with
  `pad_to_longer`, the shorter of the two zero-padded), targets likewise (soft labels). The authors mix
  waveforms, before the filterbank.
* `feature_noise` and `time_shift`: the Speech Commands recipe: add U[0, 1) noise scaled by U[0, 1) / 10 to the
  normalised features, then roll them by U{-10..9} frames.

Randomness comes from torch's global generator, which `Trainer` seeds (and re-seeds in each data worker).
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF


def spec_augment(features: torch.Tensor, freqm: int, timem: int, mask_value: float = 0.0) -> torch.Tensor:
    """Mask one band of mel bins and one span of frames in each clip.

    Args:
        features: [batch, frames, mel bins].
        freqm: maximum frequency-mask width in mel bins (0: none); the width is uniform on 0..freqm-1.
        timem: maximum time-mask width in frames (0: none).
        mask_value: value written into masked cells. The authors mask the un-normalised fbank with 0, i.e.
            `feature_extractor.normalize(0)` on normalised features; the collator passes that.

    Returns:
        A new tensor [batch, frames, mel bins].
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [batch, frames, mel bins], got shape {tuple(features.shape)}")
    if freqm < 0 or timem < 0:
        raise ValueError(f"mask widths must be >= 0, got freqm={freqm}, timem={timem}")
    spec = features.unsqueeze(1)  # [B, 1, T, F]: axis 2 = time, axis 3 = frequency
    if freqm:
        spec = AF.mask_along_axis_iid(spec, freqm, mask_value, axis=3)
    if timem:
        spec = AF.mask_along_axis_iid(spec, timem, mask_value, axis=2)
    return spec.squeeze(1)


def sample_mixup(batch_size: int, prob: float, alpha: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the mixup plan of a batch: (partner index [B] long, lambda [B] float).

    A clip that is not mixed (probability 1 - prob) gets lambda = 1 and itself as partner. Partners are drawn
    uniformly from the batch (itself included), which is a uniform draw from the data set when the batch is.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mixup probability must be in [0, 1], got {prob}")
    partner = torch.randint(0, batch_size, (batch_size,))
    lam = torch.distributions.Beta(alpha, alpha).sample((batch_size,))
    mixed = torch.rand(batch_size) < prob
    return torch.where(mixed, partner, torch.arange(batch_size)), torch.where(mixed, lam, torch.ones(batch_size))


def mix_waveforms(waveforms: list[torch.Tensor], partner: torch.Tensor, lam: torch.Tensor,
                  pad_to_longer: bool = False) -> list[torch.Tensor]:
    """x_i = lam_i x_i + (1 - lam_i) x_partner(i), the partner zero-padded or cut to x_i's length.

    Args:
        waveforms: B mono clips [samples_i]. partner: [B] indices. lam: [B] weights of the clips themselves.
        pad_to_longer: never cut the partner: a mixed clip is as long as the longer of the two, the shorter one
            zero-padded (for frame targets, which keep all the partner's events at their times).
    """
    out = []
    for i, x in enumerate(waveforms):
        j, w = int(partner[i]), float(lam[i])
        if j == i or w == 1.0:
            out.append(x)
            continue
        other = waveforms[j] if pad_to_longer else waveforms[j][: x.shape[0]]
        length = max(x.shape[0], other.shape[0])
        x, other = (torch.nn.functional.pad(v, (0, length - v.shape[0])) for v in (x, other))
        out.append(w * x + (1.0 - w) * other)
    return out


def mix_targets(targets: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Soft targets [B, C] (or frame targets [B, T, C]): lam_i y_i + (1 - lam_i) y_partner(i) (a label both clips
    share, at the same frame, keeps weight 1)."""
    lam = lam.to(targets.dtype).view(-1, *[1] * (targets.ndim - 1))
    return lam * targets + (1.0 - lam) * targets[partner]


def feature_noise(features: torch.Tensor, scale: float = 0.1) -> torch.Tensor:
    """features + U[0, 1) noise [B, T, F] times a per-clip U[0, 1) * scale (the authors: scale 1/10)."""
    level = torch.rand(features.shape[0], 1, 1, dtype=features.dtype, device=features.device) * scale
    return features + torch.rand_like(features) * level


def time_shift(features: torch.Tensor, max_shift: int = 10) -> torch.Tensor:
    """Roll each clip [T, F] of features [B, T, F] circularly in time by U{-max_shift..max_shift-1} frames."""
    if max_shift <= 0:
        return features
    shifts = torch.randint(-max_shift, max_shift, (features.shape[0],)).tolist()
    return torch.stack([torch.roll(clip, s, dims=0) for clip, s in zip(features, shifts)])


__all__ = ["spec_augment", "sample_mixup", "mix_waveforms", "mix_targets", "feature_noise", "time_shift"]
