"""Audio Spectrogram Transformer (Gong, Chung and Glass, Interspeech 2021).

A spectrogram [batch, frames, mel bins] is cut into overlapping 16x16 patches (strides `frequency_stride` x
`time_stride`), each projected to D dims; a cls and a distillation token are prepended, learned position
embeddings added, and a pre-norm ViT encoder runs over the tokens. The pooled output is the mean of the two
tokens after the final LayerNorm; the head is LayerNorm + Linear.

Module and parameter names follow the layout `transformers` writes to disk (`encoder.layer.N.attention.
attention.query`, ...), so checkpoints move between the two libraries without renaming.

Beyond `transformers`' AST: inputs of any frame count (position embeddings adapted with the authors' rules
and cached per length), batches of clips of different lengths with a frame-level `attention_mask`,
distinct LayerNorm eps for backbone and head (the authors' 1e-6 / 1e-5), soft-label cross-entropy for mixup,
and `from_pretrained(..., max_length=N)` that adapts rather than re-initialises the position embeddings.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, SequenceClassifierOutput

from . import autocast_cpu, onednn
from .configuration_ast import NUM_PREFIX_TOKENS, ASTConfig, patch_grid
from .labels import generic_id2label

# --------------------------------------------------------------------------------------------------------------
# Position-embedding adaptation (the authors' `audioset_pretrain` rule), kept beside the model it serves.
# --------------------------------------------------------------------------------------------------------------


def _adapt_axis(grid: torch.Tensor, new_size: int, axis: int) -> torch.Tensor:
    """Centre-cut (shorter) or bilinearly resize (longer) a [1, D, F, T] grid along `axis` (2 = F, 3 = T)."""
    old_size = grid.shape[axis]
    if new_size < old_size:
        start = old_size // 2 - new_size // 2
        return grid.narrow(axis, start, new_size)
    if new_size > old_size:
        size = list(grid.shape[2:])
        size[axis - 2] = new_size
        return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)
    return grid


def adapt_position_embeddings(position_embeddings: torch.Tensor, source_grid: tuple[int, int],
                              target_grid: tuple[int, int], num_prefix_tokens: int = NUM_PREFIX_TOKENS) -> torch.Tensor:
    """Adapt learned position embeddings to another patch grid, as the AST authors do.

    The same rule serves every member of the family: the AST's `audioset_pretrain` and ImageNet (DeiT grid
    14 x 14 or 24 x 24) paths, and SSAST's fine-tuning from its pretraining grid. SSAST's code differs in two
    quirks (a time resize to 8 frequency rows, a `+ t_dim` in the frequency cut) that change nothing for its
    released geometries; this rule is what that code means (docs/converter.md, "SSAST position embeddings").

    Args:
        position_embeddings: [1, prefix + f0 * t0, D]; the prefix token positions, then patches frequency-major.
        source_grid: (f0, t0) patches along (frequency, time) the embeddings were learned for.
        target_grid: (f, t) wanted.
        num_prefix_tokens: token positions before the patches (2: cls + distillation; 1: cls).

    Returns:
        [1, prefix + f * t, D]. Time first: a shorter grid is cut from the centre (start = t0 // 2 - t // 2), a
        longer one resized bilinearly (align_corners=False); then frequency by the same rule. The prefix token
        positions are kept as they are.
    """
    f0, t0 = source_grid
    f, t = target_grid
    tokens, patches = position_embeddings[:, :num_prefix_tokens], position_embeddings[:, num_prefix_tokens:]
    if patches.shape[1] != f0 * t0:
        raise ValueError(f"position embeddings hold {patches.shape[1]} patches, not {f0}x{t0}={f0 * t0}")
    dim = patches.shape[-1]
    grid = patches.transpose(1, 2).reshape(1, dim, f0, t0)
    grid = _adapt_axis(grid, t, axis=3)
    grid = _adapt_axis(grid, f, axis=2)
    return torch.cat([tokens, grid.reshape(1, dim, f * t).transpose(1, 2)], dim=1)


# --------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------


class ASTPatchEmbeddings(nn.Module):
    """[batch, frames, mel bins] -> [batch, f * t, D] patch tokens, frequency-major (index fi * t + ti)."""

    def __init__(self, config: ASTConfig):
        super().__init__()
        self.projection = nn.Conv2d(1, config.hidden_size, kernel_size=config.patch_shape,
                                    stride=(config.frequency_stride, config.time_stride))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        # The spectrogram is seen as a one-channel image with frequency as height: [B, 1, F, T].
        image = input_values.unsqueeze(1).transpose(2, 3)
        if autocast_cpu.cpu_bf16_training(image):  # its bf16 weight gradient is the slower (autocast_cpu)
            with torch.autocast("cpu", enabled=False):
                return self.projection(image.float()).flatten(2).transpose(1, 2)
        return self.projection(image).flatten(2).transpose(1, 2)


@dataclass(frozen=True)
class Patchout:
    """PaSST's patchout (Koutini et al. 2021): patches left out of the token sequence while training.

    Args:
        time: whole time columns of the patch grid to drop (structured); at least one column is kept.
        freq: whole frequency rows of the patch grid to drop (structured); at least one row is kept.
        random: fraction in [0, 1) of the patches left after the structured drops to drop too (unstructured),
            rounded down; at least one patch is kept.

    One drop is drawn per batch from torch's global generator (which `Trainer` seeds), the same for every clip so
    that the batch stays rectangular, after the position embeddings are added: every kept patch carries the
    position embedding of its place in the full grid. The prefix tokens are never dropped. In a right-padded batch
    the token mask is cut the same way, and the first time column (real in every clip) is never dropped, so that
    every clip keeps at least one real patch ("mean" pooling divides by their count).
    """

    time: int = 0
    freq: int = 0
    random: float = 0.0

    def __post_init__(self):
        for name in ("time", "freq"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"patchout {name} is a count of patch {'columns' if name == 'time' else 'rows'} "
                                 f"to drop, a whole number >= 0; got {value!r}")
            object.__setattr__(self, name, int(value))  # a numpy integer too: the int it is
        if not 0.0 <= self.random < 1.0:
            raise ValueError(f"patchout random is the fraction of patches to drop, in [0, 1); got {self.random!r}")

    @property
    def active(self) -> bool:
        return bool(self.time or self.freq or self.random)

    def kept_patches(self, grid: tuple[int, int], device: torch.device, keep_first_column: bool = False
                     ) -> torch.Tensor:
        """Indices [kept] (ascending, frequency-major: fi * t + ti) of the patches of a (f, t) grid that stay;
        with `keep_first_column`, none of time column 0 is dropped."""
        f, t = grid
        keep = torch.ones(f, t, dtype=torch.bool)
        if self.time:
            first = int(keep_first_column)
            keep[:, first + torch.randperm(t - first)[:min(self.time, t - 1)]] = False
        if self.freq:
            keep[torch.randperm(f)[:min(self.freq, f - 1)]] = False
        kept = keep.flatten().nonzero().squeeze(1)
        if self.random:
            droppable = (kept % t != 0).nonzero().squeeze(1) if keep_first_column else torch.arange(kept.numel())
            count = min(int(self.random * kept.numel()), droppable.numel(), kept.numel() - 1)
            dropped = droppable[torch.randperm(droppable.numel())[:count]]
            kept = kept[torch.ones(kept.numel(), dtype=torch.bool).index_fill_(0, dropped, False)]
        return kept.to(device)

    def apply(self, tokens: torch.Tensor, token_mask: torch.Tensor | None, grid: tuple[int, int],
              num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens [batch, prefix + f * t, D] (and token mask [batch, prefix + f * t]) -> the prefix tokens and the
        kept patches [batch, prefix + kept, D] (and their mask)."""
        kept = self.kept_patches(grid, tokens.device, keep_first_column=token_mask is not None) + num_prefix_tokens
        index = torch.cat([torch.arange(num_prefix_tokens, device=tokens.device), kept])
        return tokens[:, index], None if token_mask is None else token_mask[:, index]


NO_PATCHOUT = Patchout()


class ASTEmbeddings(nn.Module):
    """Patch tokens + prefix tokens (cls, and distillation unless `num_prefix_tokens` is 1) + (adapted) position
    embeddings; in training, `patchout` (default: none) leaves patches out after the position embeddings are
    added."""

    patchout: Patchout = NO_PATCHOUT

    def __init__(self, config: ASTConfig):
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.distillation_token = (nn.Parameter(torch.zeros(1, 1, config.hidden_size))
                                   if config.num_prefix_tokens == 2 else None)
        self.patch_embeddings = ASTPatchEmbeddings(config)
        f, t = config.patch_grid()
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, config.num_prefix_tokens + f * t, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self._adapted: dict[tuple, torch.Tensor] = {}

    def position_embeddings_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """[1, prefix + f * t, D] position embeddings for a (f, t) patch grid; cached per grid when no gradient is
        needed (the cache entry remembers the values it was made from, so any update of the parameter, even one
        written through `.data`, is noticed)."""
        param = self.position_embeddings
        base = self.config.patch_grid()
        if grid == base:
            return param
        prefix = self.config.num_prefix_tokens
        if (torch.is_grad_enabled() and param.requires_grad) or torch.compiler.is_compiling():
            return adapt_position_embeddings(param, base, grid, prefix)
        source = param.detach()
        key = (grid, source.device, source.dtype)
        entry = self._adapted.get(key)
        if entry is None or not torch.equal(entry[0], source):
            if len(self._adapted) > 32:
                self._adapted.clear()
            entry = self._adapted[key] = (source.clone(), adapt_position_embeddings(source, base, grid, prefix))
        return entry[1]

    def forward(self, input_values: torch.Tensor, frames_per_clip: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            input_values: [batch, frames, mel bins] normalised log-mel features.
            frames_per_clip: [batch] real frames of each clip when the batch is right-padded (None: all real).

        Returns:
            embeddings [batch, prefix + f * t, D] and a token mask [batch, prefix + f * t] (True = real) or None;
            in training with `patchout` active, [batch, prefix + kept, D] and [batch, prefix + kept].
        """
        batch, frames, _ = input_values.shape
        cfg = self.config
        prefix = cfg.num_prefix_tokens
        patch_frames = cfg.patch_shape[1]
        grid = cfg.patch_grid(frames)
        patches = self.patch_embeddings(input_values)
        prefix_tokens = [token.expand(batch, -1, -1) for token in (self.cls_token, self.distillation_token)
                         if token is not None]
        tokens = torch.cat([*prefix_tokens, patches], dim=1)
        token_mask = None
        if frames_per_clip is None or bool((frames_per_clip >= frames).all()):
            tokens = tokens + self.position_embeddings_for(grid)
        else:
            # Each clip gets the embeddings it would get alone: adapted to its own length, then right-padded.
            f, t = grid
            shortest = int(frames_per_clip.min())
            if shortest < patch_frames:  # it would get a negative patch count
                clip = int(frames_per_clip.argmin())
                try:
                    cfg.patch_grid(shortest)
                except ValueError as error:
                    raise ValueError(f"clip {clip} of the batch has {shortest} real frames (attention_mask): {error}, "
                                     f"or leave the clip out") from None
            real_frames = frames_per_clip.clamp(max=frames)
            clip_t = (real_frames - patch_frames).div(cfg.time_stride, rounding_mode="floor") + 1
            position = tokens.new_zeros(batch, prefix + f * t, tokens.shape[-1])
            for length in torch.unique(clip_t).tolist():
                rows = (clip_t == length).nonzero().squeeze(1)
                emb = self.position_embeddings_for((f, length)).to(tokens.dtype)
                patch_part = F.pad(emb[:, prefix:].reshape(1, f, length, -1), (0, 0, 0, t - length))
                position[rows] = torch.cat([emb[:, :prefix], patch_part.reshape(1, f * t, -1)], dim=1)
            tokens = tokens + position
            time_index = torch.arange(t, device=tokens.device).repeat(f)  # frequency-major token order
            token_mask = torch.cat([torch.ones(batch, prefix, dtype=torch.bool, device=tokens.device),
                                    time_index.unsqueeze(0) < clip_t.unsqueeze(1)], dim=1)
        if self.training and self.patchout.active:
            tokens, token_mask = self.patchout.apply(tokens, token_mask, grid, prefix)
        return self.dropout(tokens), token_mask


class ASTLinear(nn.Module):
    """A Linear layer kept under a `.dense` name, the on-disk layout of `transformers`' AST."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        return onednn.linear_layer(x, self.dense, gelu)


class ASTSelfAttention(nn.Module):
    """Multi-head self-attention over [batch, tokens, D]; `sdpa` (fused kernel) or `eager` (explicit softmax)."""

    def __init__(self, config: ASTConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.key = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.value = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)

    def projections(self, hidden_states: torch.Tensor, rows: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries of the first `rows` tokens, keys and values of all, each [batch, heads, rows or tokens, head_dim].

        Where autograd records (training) and every token has a query, the three projections are one matmul over
        the concatenated weights: under CPU bf16 autocast that casts the input once instead of three times and
        makes one large GEMM of three small ones (the demo's bf16 step 7% faster). Inference keeps the three weights as
        they are (no concatenated copy to keep or to rebuild per call) and runs them through `onednn`."""
        batch, tokens, _ = hidden_states.shape
        heads = (self.num_heads, self.head_dim)
        projections = (self.query, self.key, self.value)
        if torch.is_grad_enabled() and rows == tokens and all(isinstance(p, nn.Linear) for p in projections):
            weight = torch.cat([p.weight for p in projections])
            bias = None if self.query.bias is None else torch.cat([p.bias for p in projections])
            qkv = onednn.differentiable_linear(hidden_states, weight, bias).view(batch, tokens, 3, *heads)
            return qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q = onednn.linear_layer(hidden_states[:, :rows], self.query).view(batch, rows, *heads).transpose(1, 2)
        k = onednn.linear_layer(hidden_states, self.key).view(batch, tokens, *heads).transpose(1, 2)
        v = onednn.linear_layer(hidden_states, self.value).view(batch, tokens, *heads).transpose(1, 2)
        return q, k, v

    def forward(self, hidden_states: torch.Tensor, key_mask: torch.Tensor | None = None,
                output_attentions: bool = False, queries: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """key_mask: [batch, 1, 1, tokens] bool, True where a token may be attended to. queries: only the first
        `queries` tokens attend (to every token), so the context is [batch, queries, D]; None: all of them."""
        batch, tokens, dim = hidden_states.shape
        rows = tokens if queries is None else queries
        q, k, v = self.projections(hidden_states, rows)
        dropout = self.config.attention_probs_dropout_prob if self.training else 0.0
        weights = None
        fused = self.config._attn_implementation == "sdpa" and not output_attentions
        if not output_attentions and dropout == 0.0 and onednn.cpu_inference(q):
            if q.dtype == torch.bfloat16:
                return onednn.bf16_attention(q, k, v, key_mask), None  # the host's fastest (bf16_policy)
            if fused and onednn.float32_attention(self.num_heads, rows, tokens, self.head_dim) == "per_head":
                return onednn.attention_per_head(q, k, v, key_mask), None
        if fused and autocast_cpu.cpu_bf16_training(q):
            # the fused kernel in whichever dtype trains faster at this shape here (autocast_cpu)
            dtype = autocast_cpu.attention_dtype(batch, self.num_heads, tokens, self.head_dim)
            with torch.autocast("cpu", enabled=False):
                context = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=key_mask,
                                                         dropout_p=dropout)
        elif fused:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)
        else:
            scores = (q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
            context = F.dropout(weights, p=dropout) @ v
        return context.transpose(1, 2).reshape(batch, rows, dim), weights


class ASTAttention(nn.Module):
    def __init__(self, config: ASTConfig):
        super().__init__()
        self.attention = ASTSelfAttention(config)
        self.output = ASTLinear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, key_mask=None, output_attentions=False, queries=None):
        context, weights = self.attention(hidden_states, key_mask, output_attentions, queries)
        return self.output(context), weights


class ASTLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ASTConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ASTAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = ASTLinear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.exact_gelu = config.hidden_act == "gelu"
        self.output = ASTLinear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, key_mask=None, output_attentions=False, queries=None):
        """hidden_states [batch, tokens, D] -> [batch, tokens, D], or the first `queries` tokens' outputs
        [batch, queries, D] (they still attend to every token)."""
        attended, weights = self.attention(self.layernorm_before(hidden_states), key_mask, output_attentions, queries)
        if queries is not None:
            hidden_states = hidden_states[:, :queries]
        hidden_states = hidden_states + self.dropout(attended)
        normed = self.layernorm_after(hidden_states)
        if self.exact_gelu:  # fused into the matmul where the backend can
            mlp = self.output(self.intermediate(normed, gelu=True))
        else:
            mlp = self.output(self.activation(self.intermediate(normed)))
        return hidden_states + self.dropout(mlp), weights


@dataclass(frozen=True)
class TokenReduction:
    """Inference-time patch dropping guided by the prefix tokens' attention (opt-in; see `set_token_reduction`).

    Args:
        keep: fraction in (0, 1) of each clip's patch tokens that go on through the later layers (rounded, >= 1),
            counted from the clip's own real patches: in a padded batch a clip keeps what it would keep alone.
        after_layer: layers (>= 0) that run over every token first. Before the next layer, each patch is scored by
            the attention the prefix tokens pay it in that layer (its own query and key projections on its
            LayerNorm'd input, softmax over all real tokens, mean over heads and prefix tokens); the top `keep`
            patches of each clip and the prefix tokens run through the remaining layers, the others keep the
            state they had at that point.
        num_prefix_tokens: the model's prefix tokens (cls, distillation), which always go on.
    """

    keep: float
    after_layer: int
    num_prefix_tokens: int = NUM_PREFIX_TOKENS

    def __post_init__(self):
        if not 0.0 < self.keep < 1.0:
            raise ValueError(f"token reduction keep is the fraction of patches kept, in (0, 1); got {self.keep!r}")
        if (isinstance(self.after_layer, bool) or not isinstance(self.after_layer, numbers.Integral)
                or self.after_layer < 0):
            raise ValueError(f"token reduction after_layer is a layer count >= 0, got {self.after_layer!r}")
        object.__setattr__(self, "after_layer", int(self.after_layer))  # a numpy integer too: the int it is

    def kept_tokens(self, layer: ASTLayer, hidden_states: torch.Tensor,
                    token_mask: torch.Tensor | None) -> torch.Tensor:
        """Indices [batch, prefix + kept] (ascending) of the tokens of `hidden_states` [batch, tokens, D] that go
        through `layer` and the layers after it; padded patches (`token_mask` False) are dropped first."""
        return self.select(layer, hidden_states, token_mask)[0]

    def select(self, layer: ASTLayer, hidden_states: torch.Tensor,
               token_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`kept_tokens`' indices and their token mask [batch, prefix + kept] (None without `token_mask`).

        Each clip keeps `keep` x its own real patches; a batch's rows are as many as its largest count needs, and a
        clip's rows beyond its own count (its lower-ranked or padded patches) are marked False: they run as padding
        and come out with the state they had when they were dropped."""
        attention = layer.attention.attention
        num_prefix_tokens = self.num_prefix_tokens
        batch, tokens, _ = hidden_states.shape
        heads, head_dim = attention.num_heads, attention.head_dim
        normed = layer.layernorm_before(hidden_states)
        # the modules, not their weights: an int8 dynamically quantised Linear has no weight tensor
        query = attention.query(normed[:, :num_prefix_tokens])
        key = attention.key(normed)
        query = query.view(batch, num_prefix_tokens, heads, head_dim).transpose(1, 2)
        key = key.view(batch, tokens, heads, head_dim).transpose(1, 2)
        scores = (query @ key.transpose(-2, -1)).float() * head_dim ** -0.5  # [batch, heads, prefix, tokens]
        if token_mask is not None:
            scores = scores.masked_fill(~token_mask[:, None, None, :], float("-inf"))
        importance = scores.softmax(dim=-1).mean(dim=(1, 2))[:, num_prefix_tokens:]  # [batch, patches]
        prefix = torch.arange(num_prefix_tokens, device=importance.device).expand(batch, -1)
        if token_mask is None:
            patches = tokens - num_prefix_tokens
            count = min(patches, max(1, round(self.keep * patches)))
            kept = importance.topk(count, dim=1).indices.sort(dim=1).values + num_prefix_tokens
            return torch.cat([prefix, kept], dim=1), None
        importance = importance.masked_fill(~token_mask[:, num_prefix_tokens:], -1.0)
        # float64 and half-to-even rounding, as Python's round() of a clip alone
        per_clip = (token_mask[:, num_prefix_tokens:].sum(dim=1).double() * self.keep).round().clamp(min=1).long()
        ranked = importance.topk(int(per_clip.max()), dim=1).indices  # best first
        kept, order = ranked.sort(dim=1)
        within = order < per_clip[:, None]  # rank below the clip's own count
        indices = torch.cat([prefix, kept + num_prefix_tokens], dim=1)
        return indices, torch.cat([torch.ones_like(prefix, dtype=torch.bool), within], dim=1)


class ASTEncoder(nn.Module):
    """The stack of `ASTLayer`s over embeddings [batch, tokens, D]; padded tokens are zeroed after every layer.

    `token_reduction` (default None: off) drops patch tokens part-way through in eval mode (`TokenReduction`).
    """

    token_reduction: TokenReduction | None = None

    def __init__(self, config: ASTConfig):
        super().__init__()
        self.layer = nn.ModuleList(ASTLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                last_layer_tokens: int | None = None) -> BaseModelOutput:
        """
        Args:
            hidden_states: [batch, tokens, D] embeddings.
            token_mask: [batch, tokens] bool, True = real token; None: all real.
            last_layer_tokens: the last layer computes only the first N tokens' outputs (their queries still
                attend to every token): for a head that reads only the prefix tokens, the same numbers for ~5/6 less
                of the last layer's work. `last_hidden_state` is then [batch, N, D]. Not with either output.

        Returns:
            `BaseModelOutput`: `last_hidden_state` [batch, tokens, D] (before the final LayerNorm), `hidden_states`
            (the input and each layer's output) and `attentions` ([batch, heads, tokens, tokens] per layer) when
            asked for. In CPU inference without either, the layers run over `onednn.clips_per_call` clips at a time.
            With `token_reduction` set, in eval mode and without either, dropped tokens come out with the state they
            had when they were dropped.
        """
        if last_layer_tokens is not None and (output_attentions or output_hidden_states):
            raise ValueError("last_layer_tokens computes only part of the last layer, so it cannot come with "
                             "output_attentions or output_hidden_states")
        if (not (output_attentions or output_hidden_states) and onednn.bf16_runs_in_float32(hidden_states)
                and not self._has_forward_hooks()):
            twin = self.float32_twin()
            twin.token_reduction = self.token_reduction
            last = twin(hidden_states.float(), token_mask, last_layer_tokens=last_layer_tokens).last_hidden_state
            return BaseModelOutput(last_hidden_state=last.to(hidden_states.dtype))
        batch, tokens, dim = hidden_states.shape
        per_call = batch if output_attentions or output_hidden_states else onednn.clips_per_call(hidden_states)
        if per_call >= batch:
            return self._run_layers(hidden_states, token_mask, output_attentions, output_hidden_states,
                                    last_layer_tokens)
        last = hidden_states.new_empty(batch, last_layer_tokens or tokens, dim)
        for start in range(0, batch, per_call):
            rows = slice(start, start + per_call)
            last[rows] = self._run_layers(hidden_states[rows], None if token_mask is None else token_mask[rows],
                                          last_layer_tokens=last_layer_tokens).last_hidden_state
        return BaseModelOutput(last_hidden_state=last)

    def _has_forward_hooks(self) -> bool:
        """Whether a forward hook or pre-hook is registered on the encoder or any module in it: such a model runs its
        own bf16 layers (the float32 twin's copies would leave the hooks unseen or show them other modules)."""
        return any(module._forward_hooks or module._forward_pre_hooks for module in self.modules())

    def float32_twin(self) -> ASTEncoder:
        """This encoder with float32 weights, made at first use and kept until one of its weights changes (data
        pointer or version): how a bf16 model runs on a CPU whose bf16 GEMM is slower than its float32 GEMM
        (`onednn.bf16_policy`), so that every layer takes the float32 paths with one cast in and one out, instead
        of casts around each matmul. Not a submodule: it is neither saved nor moved with the model; it follows the
        encoder's train/eval mode (dropout) at every use. Not used while forward hooks are registered in the encoder
        (`_has_forward_hooks`): those layers then run in bf16 with their linears upcast, as for hidden states."""
        signature = tuple((p.data_ptr(), p._version) for p in self.parameters())
        kept = self.__dict__.get("_float32_twin")
        if kept is None or kept[0] != signature:
            twin = ASTEncoder.__new__(ASTEncoder)
            nn.Module.__init__(twin)
            twin.layer = copy.deepcopy(self.layer).float()
            kept = self.__dict__["_float32_twin"] = (signature, twin)
        return kept[1].train(self.training)

    def _run_layers(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None,
                    output_attentions: bool = False, output_hidden_states: bool = False,
                    last_layer_tokens: int | None = None) -> BaseModelOutput:
        key_mask = None if token_mask is None else token_mask[:, None, None, :]
        keep = None if token_mask is None else token_mask.unsqueeze(-1).to(hidden_states.dtype)
        all_hidden = (hidden_states,) if output_hidden_states else None
        attentions = () if output_attentions else None
        reduction = self.token_reduction
        reduce_before = (reduction.after_layer if reduction is not None and not self.training
                         and not (output_attentions or output_hidden_states) else None)
        all_tokens = kept = None
        last_index = len(self.layer) - 1
        for index, layer in enumerate(self.layer):
            if index == reduce_before:
                all_tokens = hidden_states
                kept, kept_mask = reduction.select(layer, hidden_states, token_mask)
                kept = kept.unsqueeze(-1)
                hidden_states = hidden_states.gather(1, kept.expand(-1, -1, hidden_states.shape[-1]))
                if token_mask is not None:
                    token_mask = kept_mask
                    key_mask = token_mask[:, None, None, :]
                    keep = token_mask.unsqueeze(-1).to(hidden_states.dtype)
            queries = last_layer_tokens if index == last_index else None
            hidden_states, weights = layer(hidden_states, key_mask, output_attentions, queries)
            if keep is not None:  # padded patches carry nothing forward
                hidden_states = hidden_states * (keep if queries is None else keep[:, :queries])
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                attentions += (weights,)
        if last_layer_tokens is not None:  # already these rows after a last layer; cut here without layers
            hidden_states = hidden_states[:, :last_layer_tokens]
        elif all_tokens is not None:  # the kept tokens back among the dropped ones, in their places
            index = kept.expand(-1, -1, hidden_states.shape[-1])
            if token_mask is not None:  # rows run as padding keep their state from before
                hidden_states = torch.where(token_mask.unsqueeze(-1), hidden_states, all_tokens.gather(1, index))
            hidden_states = all_tokens.scatter(1, index, hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden, attentions=attentions)


class ASTMLPHead(nn.Module):
    """LayerNorm (eps `config.head_layer_norm_eps`) + Linear to `num_labels` logits."""

    def __init__(self, config: ASTConfig):
        super().__init__()
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.head_layer_norm_eps)
        self.dense = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layernorm(pooled))


class ASTFrameHead(ASTMLPHead):
    """Frame-level head (`config.frame_head`): each time column's patch tokens averaged over frequency, then
    LayerNorm + Linear: [batch, f, t, D] -> logits [batch, t, num_labels], one row per `time_stride` x 10 ms."""

    def forward(self, columns: torch.Tensor) -> torch.Tensor:
        return super().forward(columns.mean(dim=1))


def patch_columns(sequence_output: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens [batch, prefix + f * t, D] (after the final LayerNorm) -> patch tokens by position [batch, f, t, D].

    `grid` is the input's (f, t) patch grid (`config.patch_grid(frames)`); patches are frequency-major and come
    last, after the prefix tokens (however many the model has)."""
    batch, _, dim = sequence_output.shape
    return sequence_output[:, -grid[0] * grid[1]:].reshape(batch, grid[0], grid[1], dim)


def column_mask(config: ASTConfig, frames_per_clip: torch.Tensor | None, num_columns: int) -> torch.Tensor | None:
    """[batch, num_columns] bool, True for the time columns of each clip's real frames (None: all real).

    `frames_per_clip` [batch] is `frames_from_attention_mask`'s count; a clip's columns are those of its own grid."""
    if frames_per_clip is None:
        return None
    real = torch.tensor([config.patch_grid(int(n))[1] for n in frames_per_clip.clamp(min=config.patch_shape[1])],
                        device=frames_per_clip.device)
    return torch.arange(num_columns, device=real.device)[None, :] < real.clamp(max=num_columns)[:, None]


def frame_loss(frame_logits: torch.Tensor, frame_targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """BCE with logits per frame and label, averaged over the real columns only.

    Args:
        frame_logits: [batch, columns, labels]. frame_targets: the same shape, 0/1 or soft (mixup) targets.
        mask: [batch, columns] bool, True = real column (None: all real); padded columns add nothing.
    """
    if frame_targets.shape != frame_logits.shape:
        raise ValueError(f"frame_targets have shape {tuple(frame_targets.shape)} but the frame head gives "
                         f"{tuple(frame_logits.shape)} [batch, time columns, labels]; make the targets at the "
                         f"model's column rate (time_stride x 10 ms) for inputs of this many frames")
    per_cell = F.binary_cross_entropy_with_logits(frame_logits.float(), frame_targets.float(), reduction="none")
    if mask is None:
        return per_cell.mean()
    weight = mask.unsqueeze(-1).to(device=per_cell.device, dtype=per_cell.dtype)
    return (per_cell * weight).sum() / (weight.sum() * per_cell.shape[-1]).clamp(min=1.0)


@dataclass
class ASTAudioClassificationOutput(SequenceClassifierOutput):
    """`SequenceClassifierOutput` plus `frame_logits` [batch, time columns, num_labels] from the frame head
    (None when `config.frame_head` is False)."""

    frame_logits: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------------------
# Pre-trained models
# --------------------------------------------------------------------------------------------------------------


def pool_tokens(sequence_output: torch.Tensor, token_mask: torch.Tensor | None, config: ASTConfig) -> torch.Tensor:
    """[batch, prefix + f * t, D] tokens after the final LayerNorm (padded ones zero) -> [batch, D] pooled output.

    "cls": the mean of the prefix tokens (the AST; SSAST's `ft_cls`). "mean": the mean of the patch tokens
    (SSAST's `ft_avgtok`), over each clip's real patches when `token_mask` [batch, tokens] marks padding.
    """
    prefix = config.num_prefix_tokens
    if config.pooling == "cls":
        return sequence_output[:, 0] if prefix == 1 else (sequence_output[:, 0] + sequence_output[:, 1]) / 2
    patches = sequence_output[:, prefix:]
    if token_mask is None:
        return patches.mean(dim=1)
    real = token_mask[:, prefix:].sum(dim=1, keepdim=True).to(patches.dtype)
    return patches.sum(dim=1) / real


def frames_from_attention_mask(attention_mask: torch.Tensor | np.ndarray | None,
                               input_values: torch.Tensor | np.ndarray) -> torch.Tensor | None:
    """[batch, frames] 0/1 frame mask (tensor or numpy array, as ASTFeatureExtractor returns) -> [batch] real frames
    per clip, on the device of `input_values` when that is a tensor (None where every frame is real)."""
    if attention_mask is None:
        return None
    if isinstance(attention_mask, np.ndarray):
        attention_mask = torch.from_numpy(attention_mask)
        if isinstance(input_values, torch.Tensor):
            attention_mask = attention_mask.to(input_values.device)
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask is a {type(attention_mask).__name__}; give a torch tensor or numpy array "
                         f"[batch, frames], as ASTFeatureExtractor returns")
    if attention_mask.shape != input_values.shape[:2]:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected [batch, frames] = "
                         f"{tuple(input_values.shape[:2])}, one entry per frame of input_values")
    frames = attention_mask.to(torch.long).sum(dim=1)
    if not (torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()):
        # A clip's real frames are its first `frames`: a mask of left padding, of holes or of values other than
        # 0 and 1 would be read as another clip (skipped while a graph is traced, as `_prepare_input`'s check).
        right_padded = torch.arange(attention_mask.shape[1], device=frames.device)[None, :] < frames[:, None]
        bad = (attention_mask != right_padded.to(attention_mask.dtype)).any(dim=1)
        if bool(bad.any()):
            raise ValueError(f"attention_mask of clip(s) {bad.nonzero().flatten().tolist()} is not 1 for the real "
                             f"frames and 0 for the padding after them; the model takes right-padded clips (as "
                             f"ASTFeatureExtractor pads them): pad each clip at its end, with a mask of 1s then 0s")
    return frames


# --------------------------------------------------------------------------------------------------------------
# Loading policies of `from_pretrained`, one step each
# --------------------------------------------------------------------------------------------------------------


def _whole_number(name: str, value) -> int:
    """`value` as an int: a whole number of any type (a numpy integer, a float such as 512.0), as `ASTConfig` reads its
    sizes; anything else (a bool, a fraction, a string) raises `ValueError` naming `name`."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{name} must be a whole number, got {value!r}")


def _require_config(source: str, kwargs: dict) -> None:
    """A local folder without config.json (in its `subfolder`, where one is given): say so (transformers would build
    a default-sized model and report every weight as mismatched)."""
    folder = Path(source) / (kwargs.get("subfolder") or "")
    if kwargs.get("config") is None and Path(source).is_dir() and not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json, so the model's shape is unknown; put the config.json saved "
                         f"with these weights into the folder (an original .pth is converted with `ast-hf convert`)")


def _fresh_head_for_num_labels(source: str, kwargs: dict) -> bool:
    """`num_labels` that differs from the checkpoint's: prepare `kwargs` for a fresh head (generic label names, no
    problem type, the old head's shapes ignored) on the loaded backbone. Returns whether the head is fresh."""
    num_labels = kwargs.get("num_labels")
    if num_labels is None or kwargs.get("config") is not None:
        return False
    hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder")
                  if k in kwargs}
    if ASTConfig.from_pretrained(source, **hub_kwargs).num_labels == num_labels:
        return False
    kwargs.setdefault("ignore_mismatched_sizes", True)
    kwargs.setdefault("problem_type", None)
    if "id2label" not in kwargs:
        del kwargs["num_labels"]  # implied by the label map
        kwargs["id2label"] = generic_id2label(num_labels)
        kwargs["label2id"] = {name: i for i, name in kwargs["id2label"].items()}
    return True


@contextlib.contextmanager
def _held_load_report():
    """Hold back transformers' LOAD REPORT warning table while a model loads: it is shown once loading succeeds,
    and dropped when a step raises (the strict check's ValueError says the same in one line)."""
    logger = logging.getLogger("transformers.modeling_utils")
    held = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)
    for record in held:
        logger.handle(record)


# Weights of the heads (clip and frame): a fresh head may be missing from, or shaped unlike, the checkpoint.
_HEADS = ("classifier.", "frame_classifier.")


def _check_weights_match(model_class: type, source: str, info: dict, new_head: bool, allow_mismatch: bool) -> None:
    """Strict loading: ValueError when the checkpoint lacks weights the model needs, holds weights it does not use,
    or holds weights of other shapes (a config.json that does not fit the weights). A missing head is allowed for
    a fresh head and for a backbone-only checkpoint; the head's shapes may differ only for a fresh head."""
    backbone_only = all(k.startswith(_HEADS) for k in info["missing_keys"])
    head_may_be_missing = new_head or backbone_only
    missing = sorted(k for k in info["missing_keys"] if not (k.startswith(_HEADS) and head_may_be_missing))
    unexpected = sorted(info["unexpected_keys"])
    mismatched = sorted(f"{k} {'x'.join(map(str, saved))} (config.json: {'x'.join(map(str, wanted))})"
                        for k, saved, wanted in info["mismatched_keys"]
                        if not (allow_mismatch or (k.startswith(_HEADS) and new_head)))
    if not (missing or unexpected or mismatched):
        return
    problems = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for what, keys in (("missing weights", missing), ("unexpected weights", unexpected),
                                   ("weights of another shape", mismatched)) if keys]
    raise ValueError(f"checkpoint {source} does not match {model_class.__name__}: {'; '.join(problems)}. Check that "
                     f"the folder is an AST checkpoint whose config.json matches its weights, or pass strict=False to "
                     f"load what matches and initialise the rest")


def _mark_audioset_multi_label(config: ASTConfig) -> None:
    """A 527-label checkpoint with the AudioSet label names and no `problem_type` (the `MIT/ast-finetuned-audioset-*`
    configs) is multi-label: mark it, so pipelines score it with a sigmoid rather than a softmax over 527 tags."""
    if (config.problem_type is None and config.num_labels == 527
            and str(config.id2label.get(0, "")).strip() == "Speech"):
        config.problem_type = "multi_label_classification"


class ASTPreTrainedModel(PreTrainedModel):
    config_class = ASTConfig
    config: ASTConfig
    base_model_prefix = "audio_spectrogram_transformer"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ASTEmbeddings", "ASTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ASTEmbeddings):
            # timm / the authors: truncated normal tokens and position embeddings (transformers: zeros, which
            # leaves a model trained from scratch without any sense of position at the start).
            for param in (module.cls_token, module.distillation_token, module.position_embeddings):
                if param is not None:  # no distillation token with one prefix token
                    init.trunc_normal_(param, std=std)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, max_length: int | None = None,
                        frequency_stride: int | None = None, time_stride: int | None = None,
                        strict: bool = True, **kwargs):
        """`PreTrainedModel.from_pretrained` for every AST checkpoint format in use, with these steps around it.

        Args:
            max_length: frames; adapt the position embeddings to this input length with the authors' rule
                (centre cut / bilinear), never re-initialise them.
            frequency_stride, time_stride: new patch strides; the patch kernel is kept and the position embeddings
                are adapted from the checkpoint's grid to the new one in one step (`adapt_patch_grid`), as SSAST
                fine-tunes from its pretraining grid.
            num_labels (in kwargs): when it differs from the checkpoint's, the head is fresh (and the label names
                and problem type are reset) while the backbone loads (`_fresh_head_for_num_labels`).
            strict: raise `ValueError` when the folder lacks weights the model needs, holds weights it does not
                use or weights of other shapes (transformers only warns and leaves random weights;
                `_check_weights_match`). A missing head is allowed when loading a backbone-only checkpoint into
                `ASTForAudioClassification`; a classification head is ignored when loading into `ASTModel`.

        A local folder without config.json and unreadable weight files raise `ValueError` naming the folder. A
        527-label AudioSet checkpoint without `problem_type` is marked multi-label (`_mark_audioset_multi_label`).
        """
        source = str(pretrained_model_name_or_path)
        _require_config(source, kwargs)
        allow_mismatch = bool(kwargs.get("ignore_mismatched_sizes", False))  # as the caller asked, before our steps
        new_head = _fresh_head_for_num_labels(source, kwargs)
        wants_info = kwargs.pop("output_loading_info", False)
        if strict:  # shapes are judged by `_check_weights_match`, which names them, instead of transformers' raise
            kwargs["ignore_mismatched_sizes"] = True
        with _held_load_report():
            try:
                model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args,
                                                      output_loading_info=True, **kwargs)
            except SafetensorError as error:
                raise ValueError(f"cannot read the weights in {source} ({error}): the file is damaged or incomplete; "
                                 f"download or save the model again") from error
            if strict:
                _check_weights_match(cls, source, info, new_head, allow_mismatch)
        _mark_audioset_multi_label(model.config)
        if (max_length, frequency_stride, time_stride) != (None, None, None):
            model.adapt_patch_grid(max_length, frequency_stride, time_stride)
        return (model, info) if wants_info else model

    @classmethod
    def from_imagenet(cls, source: str | Path, *, num_labels: int | None = None, frequency_stride: int = 10,
                      time_stride: int = 10, max_length: int = 1024, num_mel_bins: int = 128, **config_kwargs):
        """An AST initialised from an ImageNet DeiT, by the authors' rule (`imagenet_pretrain=True`).

        Args:
            source: a DeiT checkpoint in timm's layout (`.pth`, bare or `{'model': state_dict}` as the DeiT release
                files, or `.safetensors`) or a `transformers` DeiT folder (`facebook/deit-*-distilled-*` layout).
            num_labels: classes of the fresh head (`ASTForAudioClassification`).
            frequency_stride, time_stride: patch strides (mel bins, frames); the DeiT's kernel is kept.
            max_length, num_mel_bins: the input [max_length frames, num_mel_bins bins] the model is built for.
            config_kwargs: further `ASTConfig` fields (`pooling`, dropouts, `id2label`, ...).

        The RGB patch kernel is summed to one channel, the DeiT position grid cut or resized to the patch grid
        (`adapt_position_embeddings`), the backbone LayerNorm eps is 1e-6 (timm's, which the weights were trained
        with) and the head's 1e-5; the DeiT's ImageNet heads are dropped (`imagenet_init.deit_backbone`).
        """
        from .imagenet_init import deit_backbone

        backbone = deit_backbone(source)
        if num_labels is not None:
            config_kwargs.setdefault("id2label", generic_id2label(num_labels))
        config = ASTConfig(**backbone.config_fields, frequency_stride=frequency_stride, time_stride=time_stride,
                           max_length=max_length, num_mel_bins=num_mel_bins, architectures=[cls.__name__],
                           **config_kwargs)
        model = cls(config)
        state_dict = dict(backbone.state_dict)
        state_dict["embeddings.position_embeddings"] = adapt_position_embeddings(
            state_dict["embeddings.position_embeddings"], backbone.grid, config.patch_grid(),
            config.num_prefix_tokens)
        model._backbone().load_state_dict(state_dict, strict=True)
        return model

    def set_patchout(self, time: int = 0, freq: int = 0, random: float = 0.0) -> None:
        """Leave patches out of the token sequence in training (PaSST's patchout, see `Patchout`); all 0: off.

        A training switch, not part of the model: it is not saved with the config. `ASTTrainer` sets it from
        `ASTTrainingArguments.patchout_time` / `patchout_freq` / `patchout_random`. Never applied in eval mode.

        Raises:
            ValueError: patchout asked of a model with a frame head, which scores every time column.
        """
        patchout = Patchout(time, freq, random)
        if patchout.active and getattr(self.config, "frame_head", False):
            raise ValueError("patchout drops patches, and the frame head scores every time column: train a "
                             "frame head with patchout_time = patchout_freq = patchout_random = 0")
        self._embeddings().patchout = patchout

    def set_token_reduction(self, keep: float | None = None, after_layer: int = 4) -> None:
        """Opt-in inference speed-up: after `after_layer` layers, only the prefix tokens and the `keep` fraction of
        each clip's patches that the prefix tokens attend to most go on (`TokenReduction`); `keep=None` (or 1):
        off, the model exactly as before. Applied in eval mode when neither attentions nor hidden states are
        asked for; not saved with the config.

        Raises:
            ValueError: `keep` outside (0, 1], or `after_layer` not below the number of layers.
        """
        encoder = self._backbone().encoder
        if keep is None or keep == 1:
            encoder.token_reduction = None
            return
        layers = self.config.num_hidden_layers
        if not 0 <= after_layer < layers:
            raise ValueError(f"token reduction after_layer must leave a layer to run: 0..{layers - 1}, got "
                             f"{after_layer}")
        encoder.token_reduction = TokenReduction(keep, after_layer, self.config.num_prefix_tokens)

    def _backbone(self) -> ASTModel:
        return self if isinstance(self, ASTModel) else getattr(self, self.base_model_prefix)

    def _embeddings(self) -> ASTEmbeddings:
        return self._backbone().embeddings

    def resize_max_length(self, max_length: int) -> None:
        """Adapt the learned position embeddings to inputs of `max_length` frames and record it in the config."""
        self.adapt_patch_grid(max_length=max_length)

    @torch.no_grad()
    def adapt_patch_grid(self, max_length: int | None = None, frequency_stride: int | None = None,
                         time_stride: int | None = None) -> None:
        """Adapt the model to inputs of `max_length` frames cut with new patch strides (None: keep each).

        The patch kernel is kept (only the convolution's stride changes) and the position embeddings go from the
        current patch grid to the new one in one `adapt_position_embeddings` step; the config records the result.

        Raises:
            ValueError: a value that is not a whole number (a whole float such as `5.12 * 100` or a numpy integer is
                taken as that int, as `ASTConfig` takes it), a stride that is not positive or larger than the patch
                (input would fall between patches), or a `max_length` shorter than one patch.
        """
        config = self.config
        max_length = config.max_length if max_length is None else _whole_number("max_length", max_length)
        strides = (config.frequency_stride if frequency_stride is None
                   else _whole_number("frequency_stride", frequency_stride),
                   config.time_stride if time_stride is None else _whole_number("time_stride", time_stride))
        for name, stride, side in zip(("frequency_stride", "time_stride"), strides, config.patch_shape):
            if not 1 <= stride <= side:
                raise ValueError(f"{name} {stride} does not fit the {config.patch_shape[0]}x{config.patch_shape[1]} "
                                 f"patch (mel bins x frames): give 1..{side}, or the model would skip input between "
                                 f"patches")
        old_grid = config.patch_grid()
        new_grid = patch_grid(config.num_mel_bins, max_length, config.patch_size, *strides)
        embeddings = self._embeddings()
        param = embeddings.position_embeddings
        adapted = adapt_position_embeddings(param.data, old_grid, new_grid, config.num_prefix_tokens).contiguous()
        embeddings.position_embeddings = nn.Parameter(adapted, requires_grad=param.requires_grad)
        embeddings.patch_embeddings.projection.stride = strides
        embeddings._adapted.clear()
        # one config object, shared by the backbone and its embeddings
        config.max_length, (config.frequency_stride, config.time_stride) = max_length, strides


class ASTModel(ASTPreTrainedModel):
    """The AST backbone: [batch, frames, mel bins] -> tokens [batch, prefix + f * t, D] and pooled [batch, D]."""

    # The backbone of a classification checkpoint leaves its head behind: expected, not worth a report.
    _keys_to_ignore_on_load_unexpected = [r"^classifier\.", r"^frame_classifier\."]

    def __init__(self, config: ASTConfig):
        super().__init__(config)
        self.embeddings = ASTEmbeddings(config)
        self.encoder = ASTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> ASTPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def _prepare_input(self, input_values: torch.Tensor | np.ndarray | None) -> torch.Tensor:
        """Checked `input_values` as a tensor in the patch projection's dtype and (for numpy input) on its device."""
        if input_values is None:
            raise ValueError("input_values is required: [batch, frames, mel bins] features from ASTFeatureExtractor")
        weight = self.embeddings.patch_embeddings.projection.weight
        if isinstance(input_values, np.ndarray):
            input_values = torch.from_numpy(input_values).to(weight.device)
        if not isinstance(input_values, torch.Tensor):
            raise ValueError(f"input_values is a {type(input_values).__name__}; give a torch tensor or numpy array "
                             f"[batch, frames, mel bins], as ASTFeatureExtractor returns")
        if input_values.ndim != 3 or input_values.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_values has shape {tuple(input_values.shape)}; expected [batch, frames, "
                f"{self.config.num_mel_bins}] (mel bins last), as ASTFeatureExtractor returns")
        if not input_values.is_floating_point():
            raise ValueError(f"input_values has dtype {input_values.dtype}; give float log-mel features, as "
                             f"ASTFeatureExtractor returns")
        if input_values.shape[1] < self.config.patch_shape[1]:
            patch_grid(self.config.num_mel_bins, input_values.shape[1], self.config.patch_size,
                       self.config.frequency_stride, self.config.time_stride)
        input_values = input_values.to(weight.dtype)  # float64 / float16 features into a float32 model, ...
        if input_values.dtype == torch.bfloat16 and input_values.device.type == "cpu" and not onednn.BF16_UNITS:
            # shown once per process under Python's default warning filter (one source line)
            warnings.warn("bfloat16 on a CPU without bf16 units: its matmuls run without hardware support, several "
                          "times slower than float32 here; load the model with dtype=torch.float32 for speed",
                          stacklevel=2)
        if input_values.numel() and not (torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
                                         or torch.jit.is_tracing()):
            # One pass (NaN and inf propagate through aminmax) instead of NaN logits and no word; skipped while a
            # graph is traced, where a data-dependent branch has no place, and for an empty batch (nothing to
            # check: aminmax has no value to give, and the model gives empty outputs).
            low, high = torch.aminmax(input_values)
            if not bool(torch.isfinite(low) & torch.isfinite(high)):
                bad = (~torch.isfinite(input_values)).flatten(1).any(dim=1).nonzero().flatten().tolist()
                raise ValueError(f"input_values of clip(s) {bad} contain NaN or infinite values; check the audio "
                                 f"and features of those clips (ASTFeatureExtractor refuses such samples)")
        return input_values

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        prefix_only: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """
        Args:
            input_values: [batch, frames, mel bins] normalised log-mel features (any frame count >= patch size),
                a tensor or numpy array of any float dtype: cast to the model's dtype (float64 features run in a
                float32 model as float32; a numpy array moves to the model's device). NaN or inf values raise
                `ValueError` naming the clips (one aminmax pass: 8 ms for 8 x 1024 x 128 on 2 CPU cores, under 0.1%
                of the forward; not while torch.compile, torch.export or ONNX export trace the model).
            attention_mask: optional [batch, frames] tensor or numpy array, 1 for real frames, 0 for right
                padding; every clip needs at least `patch_size` real frames.
            prefix_only: the last layer computes the prefix tokens only (they still attend to every patch), for
                callers that read only `pooler_output` of a "cls"-pooling model: the same pooled output for
                5/6 less of the last layer's work; `last_hidden_state` is then [batch, prefix, D]. Not with
                "mean" pooling, output_attentions or output_hidden_states.

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` [batch, prefix + f * t, D] (padded patches zero)
            and `pooler_output` [batch, D] (`pool_tokens`: the prefix tokens' mean, or the real patches' mean).
        """
        input_values = self._prepare_input(input_values)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if prefix_only and self.config.pooling != "cls":
            raise ValueError(f"prefix_only needs pooling='cls' (the pooled output read from the prefix tokens); this "
                             f"model pools with {self.config.pooling!r}, which needs every patch token")
        frames_per_clip = frames_from_attention_mask(attention_mask, input_values)
        hidden_states, token_mask = self.embeddings(input_values, frames_per_clip)
        prefix = self.config.num_prefix_tokens
        encoded = self.encoder(hidden_states, token_mask, output_attentions, output_hidden_states,
                               last_layer_tokens=prefix if prefix_only else None)
        if prefix_only and token_mask is not None:
            token_mask = token_mask[:, :prefix]
        sequence_output = self.layernorm(encoded.last_hidden_state)
        if token_mask is not None:
            sequence_output = sequence_output * token_mask.unsqueeze(-1).to(sequence_output.dtype)
        pooled = pool_tokens(sequence_output, token_mask, self.config)
        out = BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled,
                                         hidden_states=encoded.hidden_states, attentions=encoded.attentions)
        return out if return_dict else out.to_tuple()


class ASTForAudioClassification(ASTPreTrainedModel):
    """AST backbone + LayerNorm/Linear head on the pooled output; logits [batch, num_labels]."""

    def __init__(self, config: ASTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.audio_spectrogram_transformer = ASTModel(config)
        self.classifier = ASTMLPHead(config)
        if config.frame_head:
            self.frame_classifier = ASTFrameHead(config)
        self.post_init()

    def get_input_embeddings(self) -> ASTPatchEmbeddings:
        return self.audio_spectrogram_transformer.embeddings.patch_embeddings

    def problem_type_for(self, labels: torch.Tensor) -> str:
        """The configured problem type, or the one `transformers` would infer from the labels."""
        if self.config.problem_type is not None:
            return self.config.problem_type
        if self.num_labels == 1:
            return "regression"
        if labels.dtype in (torch.long, torch.int):
            return "single_label_classification"
        return "multi_label_classification"

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Regression: MSE. Single-label: cross-entropy on class indices [batch] or on soft targets
        [batch, num_labels] (mixup). Multi-label: BCE with logits on [batch, num_labels] targets."""
        problem = self.problem_type_for(labels)
        logits = logits.float()
        if problem == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.float().view(-1))
            return F.mse_loss(logits, labels.float().reshape(logits.shape))
        if problem == "single_label_classification":
            if labels.is_floating_point() and labels.shape == logits.shape:
                return F.cross_entropy(logits, labels.float())
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).long())
        if problem == "multi_label_classification":
            if labels.shape != logits.shape:
                raise ValueError(f"multi-label targets must have shape {tuple(logits.shape)} (one 0/1 column per "
                                 f"label), got {tuple(labels.shape)}")
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        raise ValueError(f"unknown problem_type {problem!r}; use regression, single_label_classification or "
                         f"multi_label_classification")

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        frame_targets: torch.Tensor | None = None,
        **kwargs,
    ) -> ASTAudioClassificationOutput | tuple:
        """
        Args:
            input_values: [batch, frames, mel bins], any float dtype (see `ASTModel.forward`). attention_mask:
                optional [batch, frames] frame mask.
            labels: [batch] class indices, [batch, num_labels] soft/multi-hot targets, or [batch] floats
                (regression).
            frame_targets: [batch, time columns, num_labels] 0/1 or soft frame targets (frame head only), one row
                per patch column of `time_stride` x 10 ms; BCE per frame, padded columns (`attention_mask`) left out.

        Returns:
            `ASTAudioClassificationOutput` with `logits` [batch, num_labels], `frame_logits` [batch, time columns,
            num_labels] with a frame head, and `loss` (clip loss + frame loss, of the targets given).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        # The clip head reads only the prefix tokens: the last layer need not compute the patches' outputs.
        prefix_only = (self.config.pooling == "cls" and not self.config.frame_head
                       and not output_attentions and not output_hidden_states)
        outputs = self.audio_spectrogram_transformer(
            input_values, attention_mask=attention_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, prefix_only=prefix_only)
        logits = self.classifier(outputs.pooler_output)
        loss = self.compute_loss(logits, labels) if labels is not None else None
        frame_logits = None
        if self.config.frame_head:
            frames = input_values.shape[1]
            frame_logits = self.frame_classifier(patch_columns(outputs.last_hidden_state,
                                                               self.config.patch_grid(frames)))
            if frame_targets is not None:
                mask = column_mask(self.config, frames_from_attention_mask(attention_mask, input_values),
                                   frame_logits.shape[1])
                frames_loss = frame_loss(frame_logits, frame_targets, mask)
                loss = frames_loss if loss is None else loss + frames_loss
        elif frame_targets is not None:
            raise ValueError("frame_targets were given but the model has no frame head; build or load it with "
                             "frame_head=True")
        out = ASTAudioClassificationOutput(loss=loss, logits=logits, frame_logits=frame_logits,
                                           hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return out if return_dict else out.to_tuple()


__all__ = ["ASTModel", "ASTForAudioClassification", "ASTPreTrainedModel", "Patchout", "TokenReduction",
           "adapt_position_embeddings", "pool_tokens", "ASTAudioClassificationOutput", "ASTFrameHead", "patch_columns",
           "column_mask", "frame_loss"]
