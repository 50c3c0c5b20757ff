"""Where the AST looks: attention rollout and per-layer attention maps on the [frequency, time] patch grid.

The attention weights are the model's own (`output_attentions=True`): softmax(q k^T / sqrt(d)) with q and k
computed from the LayerNorm'ed tokens (`layernorm_before`), exactly what the forward pass uses. The
original repository's `get_att_map` recomputes them from the block input without that LayerNorm.

Rollout (Abnar and Zuidema, 2020): each layer's head-averaged attention A is mixed with the residual path,
0.5 A + 0.5 I, rows renormalised, and the layers multiplied, R = A_L ... A_1; every row of R sums to one.
The map shown is the mean of the cls and distillation tokens' rows (the pooled output is their mean),
restricted to the patch columns and renormalised to sum to one over the patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio_io import audio_blocks
from .configuration_ast import NUM_PREFIX_TOKENS
from .inference import apply_activation, featurize, label_names, resolve_activation, run_model, select_top


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """[batch, heads, tokens, tokens] -> [batch, tokens, tokens] by "mean" or "max" over heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    raise ValueError(f"head_fusion must be 'mean' or 'max', got {head_fusion!r}")


def attention_rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean",
                      residual: bool = True) -> torch.Tensor:
    """Attention rollout of per-layer attention weights.

    Args:
        attentions: one [batch, heads, tokens, tokens] tensor per layer (rows sum to one), first layer first.
        head_fusion: "mean" or "max" over heads.
        residual: mix in the identity for the residual connection (0.5 A + 0.5 I), as Abnar and Zuidema do.

    Returns:
        [batch, tokens, tokens] float64, row i = how much of token i's final representation flows from each
        input token; rows sum to one.
    """
    if not attentions:
        raise ValueError("no attention weights: run the model with output_attentions=True")
    rollout = None
    for attention in attentions:
        layer = fuse_heads(attention.double(), head_fusion)
        if residual:
            layer = 0.5 * layer + 0.5 * torch.eye(layer.shape[-1], dtype=layer.dtype, device=layer.device)
        layer = layer / layer.sum(dim=-1, keepdim=True)
        rollout = layer if rollout is None else layer @ rollout
    return rollout


def token_to_patch_map(matrix: torch.Tensor, grid: tuple[int, int],
                       num_prefix_tokens: int = NUM_PREFIX_TOKENS) -> torch.Tensor:
    """[batch, tokens, tokens] -> [batch, f, t]: mean of the prefix (cls and distillation) rows over the patch
    columns, renormalised to sum to one (patches are frequency-major: index fi * t + ti)."""
    f, t = grid
    rows = matrix[:, :num_prefix_tokens, num_prefix_tokens:].mean(dim=1)
    if rows.shape[-1] != f * t:
        raise ValueError(f"{rows.shape[-1]} patch tokens do not fill a {f}x{t} grid")
    rows = rows / rows.sum(dim=-1, keepdim=True)
    return rows.reshape(-1, f, t)


@dataclass
class Explanation:
    """Attention explanations of one clip.

    Attributes:
        rollout: [f, t] rolled-out attention of the cls/distillation tokens on each patch (sums to one).
        layer_maps: [layers, f, t] each layer's head-averaged cls/distillation attention on the patches (each
            sums to one).
        rollout_matrix: [tokens, tokens] the full rollout (rows sum to one).
        features: [frames, mel bins] the model input (normalised log-mel).
        grid: (f, t) patches along frequency and time.
        grid_config: (patch size (an int, or mel bins x frames), frequency stride, time stride), to map patches back
            onto mel bins and frames.
        top: the model's best (label, score) pairs for the clip (empty for a backbone without a head).
        real_frames: frames of the clip itself; the rest of `features` is padding to the model's `max_length`.
        start: seconds from the start of the recording to the clip's first sample (the plots' time axis starts
            there).
    """

    rollout: np.ndarray
    layer_maps: np.ndarray
    rollout_matrix: np.ndarray
    features: np.ndarray
    grid: tuple[int, int]
    grid_config: tuple[int | tuple[int, int], int, int]
    top: list[tuple[str, float]]
    real_frames: int = 0
    start: float = 0.0

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """PNG: the rollout over the spectrogram, the spectrogram, and the per-layer maps."""
        from .plotting import plot_explanation

        return plot_explanation(self, path, title=title)


def explain(model, feature_extractor, audio, sampling_rate: int | None = None, head_fusion: str = "mean",
            activation: str = "auto", top_k: int = 5, start: float = 0.0, duration: float | None = None
            ) -> Explanation:
    """Attention rollout and per-layer maps of one clip.

    Args:
        model: `ASTForAudioClassification` or `ASTModel`.
        feature_extractor: the model's `ASTFeatureExtractor`.
        audio: a file path or a mono waveform [samples] with `sampling_rate` (Hz). The clip is padded to the
            model's `max_length` frames when shorter; cut long recordings with `start` / `duration`.
        head_fusion: "mean" or "max" over heads.
        start, duration: the segment to explain, in seconds from the start of `audio` (default: all of it); the
            explanation's time axis counts from `start`.
    """
    config = model.config
    rate = feature_extractor.sampling_rate
    blocks, _, _ = audio_blocks(audio, sampling_rate, rate)
    waveform = np.concatenate(list(blocks))
    if waveform.size == 0:
        raise ValueError("the recording holds no audio samples (zero-length recording)")
    total = len(waveform) / rate
    if not 0 <= start < total:
        raise ValueError(f"start {start} s is outside the recording (0 to {total:.2f} s)")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be positive seconds, got {duration}")
    first = round(start * rate)
    # a duration past the end (infinity included: round() cannot take it) means the rest of the recording
    last = len(waveform) if duration is None or duration * rate >= len(waveform) else first + round(duration * rate)
    waveform = waveform[first:last]
    if len(waveform) < feature_extractor.min_samples:
        raise ValueError(f"the segment from {start} s ({len(waveform) / rate:.4f} s of audio) is shorter than one "
                         f"25 ms frame ({feature_extractor.min_samples} samples): give an earlier start or a "
                         f"longer duration")
    values, _ = featurize(feature_extractor, [waveform], config.max_length)
    out = run_model(model, values, output_attentions=True)
    grid = config.patch_grid(values.shape[1])
    matrix = attention_rollout(out.attentions, head_fusion)
    prefix = config.num_prefix_tokens
    layer_maps = torch.stack([token_to_patch_map(fuse_heads(a.double(), head_fusion), grid, prefix)[0]
                              for a in out.attentions])
    top = []
    if getattr(out, "logits", None) is not None:
        scores = apply_activation(out.logits, resolve_activation(config, activation))[0]
        top = select_top(scores, label_names(config), top_k)
    return Explanation(rollout=token_to_patch_map(matrix, grid, prefix)[0].cpu().numpy(),
                       layer_maps=layer_maps.cpu().numpy(), rollout_matrix=matrix[0].cpu().numpy(),
                       features=values[0].numpy(), grid=grid,
                       grid_config=(config.patch_size, config.frequency_stride, config.time_stride), top=top,
                       real_frames=feature_extractor.frames_for(len(waveform)), start=float(start))


__all__ = ["Explanation", "explain", "attention_rollout", "token_to_patch_map", "fuse_heads"]
