"""Convert checkpoints written by the AST authors' code into Hub-ready folders, exactly.

The source is `torch.save(nn.DataParallel(model).state_dict())` of the authors' `ASTModel` (YuanGongND/ast):
keys `module.v.*` (a timm DeiT: `cls_token`, `dist_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.*`,
`norm`, unused `head`/`head_dist`) and `module.mlp_head.{0,1}` (LayerNorm + Linear). Nothing else is stored:
strides and input length come from the released file-name pattern (`audioset_10_10_0.4593.pth`), from the
caller, or are solved from the number of patch tokens; the label set from the label count.

The self-supervised AST (SSAST, YuanGongND/ssast) writes the same layout, with any patch shape (16x16 "Patch",
128x2 "Frame") and 1 or 2 prefix tokens. Its fine-tuned checkpoints add an `mlp_head` whose pooling ("mean" of
the patch tokens, SSAST's default, or "cls") the caller names. Its self-supervised (pretraining) checkpoints have
no `mlp_head` but the pretraining input size (`p_input_fdim`, `p_input_tdim`) and pretext-task heads
(`mask_embed`, `cpredlayer`, `gpredlayer`): they become a backbone folder whose config records the pretraining
patch grid (strides = patch, the pretraining input), from which `from_pretrained(..., frequency_stride=,
time_stride=, max_length=)` builds SSAST's fine-tuning initialisation.

The output folder (`model.safetensors`, `config.json`, `preprocessor_config.json`, `README.md`) loads in
`ast_hf` and in plain `transformers`. Before it is moved into place, it is reloaded and its logits on a fixed
input are compared with `original_forward`, an independent functional implementation of the authors' model
run in float64 straight from the source state dict; above `VERIFY_TOLERANCE` nothing is written.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .atomic_io import atomic_folder, check_destination
from .configuration_ast import (
    ORIGINAL_CLASSIFIER_LAYER_NORM_EPS,
    ORIGINAL_LAYER_NORM_EPS,
    POOLINGS,
    ASTConfig,
    patch_grid,
)
from .labels import (
    DATASETS,
    DatasetInfo,
    dataset_for_name,
    dataset_for_num_labels,
    dataset_key,
    generic_id2label,
    load_label_table,
)
from .modeling_ast import ASTForAudioClassification, ASTModel, adapt_position_embeddings

logger = logging.getLogger(__name__)

VERIFY_TOLERANCE = 1e-4
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# `{dataset}_{fstride}_{tstride}_{score}.pth`, the names of the authors' released checkpoints.
RELEASED_NAME = re.compile(r"^(?P<dataset>[A-Za-z0-9-]+)_(?P<fstride>\d+)_(?P<tstride>\d+)_(?P<score>\d*\.\d+)\.pth$")
# Keys under which training scripts commonly nest the state dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")
DEIT_HEADS = ("v.head.", "v.head_dist.")  # DeiT's ImageNet heads: no AST or SSAST task uses them
# SSAST's pretraining-stage extras: the input size it was pretrained on and the pretext-task heads.
PRETRAINING_INPUT_KEYS = ("p_input_fdim", "p_input_tdim")
PRETEXT_HEADS = ("mask_embed", "cpredlayer.", "gpredlayer.")
DROPPED_PREFIXES = DEIT_HEADS + PRETRAINING_INPUT_KEYS + PRETEXT_HEADS
BACKBONE_PREFIX = "audio_spectrogram_transformer."  # ASTForAudioClassification's name for its ASTModel
SHOW_PROGRESS_BYTES = 64 << 20
SSAST_CITATION = """
@inproceedings{gong2022ssast,
  author={Yuan Gong and Cheng-I Lai and Yu-An Chung and James Glass},
  title={{SSAST: Self-Supervised Audio Spectrogram Transformer}},
  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},
  volume={36},
  number={10},
  pages={10699--10709},
  year={2022}
}"""


class ConversionError(ValueError):
    """The converted folder does not reproduce the source model (nothing was written)."""


# --------------------------------------------------------------------------------------------------------------
# Reading the source
# --------------------------------------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an original AST checkpoint, keys without the `module.` prefix (e.g. `v.cls_token`).

    Read with `torch.load(weights_only=True)` (memory-mapped for zip-format files): a file that would need to
    run code to be read is refused and nothing in it runs. Accepts a bare state dict with or without the
    `module.` prefix, and a training checkpoint that holds one under `state_dict`, `model`, ... .
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        called = re.search(r"GLOBAL ([\w.]+)", str(error))
        if called:
            raise ValueError(
                f"refused to load {path.name}: it holds Python objects other than tensors and plain containers "
                f"(it would call {called[1]}), which only a full unpickle that can run code from the file would read; "
                f"nothing in it was executed. If you trust it, re-save just the weights: "
                f"torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pth')") from None
        detail = re.search(r"Unsupported operand \d+", str(error))
        raise ValueError(
            f"{path.name} is not a readable PyTorch checkpoint: torch.load(weights_only=True) refused it "
            f"({detail.group(0) if detail else 'unreadable pickle'}); it is truncated, corrupt, another format, "
            f"or a pickle that only a full unpickle could read; nothing in it was executed") from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, IndexError, TypeError) as error:
        raise ValueError(f"{path.name} is not a readable PyTorch checkpoint (truncated, corrupt or another format; "
                         f"size {path.stat().st_size} bytes): {_one_line(error)}") from None
    state_dict = _find_state_dict(obj, path.name)
    keys = list(state_dict)
    while keys and all(k.startswith("module.") for k in keys):  # nn.DataParallel (possibly nested)
        keys = [k[len("module."):] for k in keys]
    return dict(zip(keys, state_dict.values()))


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj, name: str) -> Mapping[str, torch.Tensor]:
    if _is_tensor_dict(obj):
        return obj
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name} holds a {type(obj).__name__}, not a state dict (a dict of parameter name -> tensor)")
    nested = {k: v for k, v in obj.items() if _is_tensor_dict(v)}
    for key in WRAPPER_KEYS:
        if key in nested:
            return nested[key]
    if len(nested) == 1:
        return next(iter(nested.values()))
    raise ValueError(f"{name} is a dict without a state dict inside (top-level keys: {sorted(map(str, obj))[:10]}); "
                     f"expected the AST weights directly or under one of {', '.join(WRAPPER_KEYS)}")


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, with a progress bar for large ones."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as file, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}",
                                       disable=size < SHOW_PROGRESS_BYTES, leave=False) as bar:
        while chunk := file.read(8 << 20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


@dataclass(frozen=True)
class SourceArchitecture:
    """What the original state dict fixes: widths, depth, patch shape, prefix tokens, label count (None without
    a head), number of patch tokens, and for an SSAST pretraining checkpoint its input (mel bins, frames)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: tuple[int, int]  # (mel bins, frames)
    num_labels: int | None
    num_patches: int
    qkv_bias: bool
    num_prefix_tokens: int = 2
    pretraining_input: tuple[int, int] | None = None

    @property
    def is_ast_shaped(self) -> bool:
        """16x16 patches and cls + distillation tokens: what the AST's checkpoints (and SSAST "Patch" ones) hold."""
        return self.patch_size == (16, 16) and self.num_prefix_tokens == 2


def _expected_shapes(dim: int, depth: int, hidden: int, patch: tuple[int, int], labels: int | None, tokens: int,
                     qkv_bias: bool, prefix: int, in_channels: int) -> dict[str, tuple[int, ...]]:
    shapes = {"v.cls_token": (1, 1, dim), "v.pos_embed": (1, tokens, dim),
              "v.patch_embed.proj.weight": (dim, in_channels, *patch), "v.patch_embed.proj.bias": (dim,),
              "v.norm.weight": (dim,), "v.norm.bias": (dim,)}
    if prefix == 2:
        shapes["v.dist_token"] = (1, 1, dim)
    if labels is not None:
        shapes.update({"mlp_head.0.weight": (dim,), "mlp_head.0.bias": (dim,), "mlp_head.1.weight": (labels, dim),
                       "mlp_head.1.bias": (labels,)})
    for i in range(depth):
        p = f"v.blocks.{i}."
        shapes.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,), p + "attn.qkv.weight": (3 * dim, dim),
                       p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,), p + "norm2.weight": (dim,),
                       p + "norm2.bias": (dim,), p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,),
                       p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,)})
        if qkv_bias:
            shapes[p + "attn.qkv.bias"] = (3 * dim,)
    return shapes


def _listing(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def inspect_original_state_dict(state_dict: Mapping[str, torch.Tensor], *, in_channels: int = 1,
                                kind: str = "an AST or SSAST checkpoint") -> SourceArchitecture:
    """Check every key and shape of an original state dict (keys without `module.`) and read its architecture.

    Recognises the AST and SSAST fine-tuned layout (`v.*` + `mlp_head.*`) and SSAST's self-supervised one (`v.*`
    + `p_input_fdim`/`p_input_tdim` + pretext heads, no `mlp_head`); with `in_channels=3`, a timm DeiT moved
    under `v.` (`imagenet_init`), which has no head of its own.

    Raises ValueError naming missing keys, unexpected keys or wrong shapes. The DeiT heads `v.head*` and SSAST's
    pretext heads are allowed (and dropped by `convert_state_dict`).
    """
    present = {k for k in state_dict if not k.startswith(DROPPED_PREFIXES)}
    for key in ("v.cls_token", "v.pos_embed", "v.patch_embed.proj.weight", "v.blocks.0.mlp.fc1.weight"):
        if key not in present:
            raise ValueError(f"not {kind}: key {key!r} is missing (keys start with {_listing(state_dict, 4)}); "
                             f"expected the authors' `v.*` / `mlp_head.*` layout")
    kernel = state_dict["v.patch_embed.proj.weight"]
    if kernel.ndim != 4 or kernel.shape[1] != in_channels:
        found = ("an ImageNet model (3-channel patch kernel): initialise from it with "
                 "ASTForAudioClassification.from_imagenet" if kernel.ndim == 4 and kernel.shape[1] == 3 else
                 "an audio model (1-channel patch kernel): convert it with `ast-hf convert`"
                 if kernel.ndim == 4 and kernel.shape[1] == 1 else f"a patch kernel of shape {tuple(kernel.shape)}")
        raise ValueError(f"not {kind}: v.patch_embed.proj.weight {tuple(kernel.shape)} is {found}")
    pretraining = all(k in state_dict for k in PRETRAINING_INPUT_KEYS)
    labels = state_dict["mlp_head.1.weight"].shape[0] if "mlp_head.1.weight" in present else None
    if labels is None and in_channels == 1 and not pretraining:
        raise ValueError(f"not {kind}: it has the `v.*` backbone but neither a classification head (`mlp_head.*`) "
                         f"nor SSAST's pretraining input size ({', '.join(PRETRAINING_INPUT_KEYS)}); keys start with "
                         f"{_listing(state_dict, 6)}")
    dim = state_dict["v.cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in present if (m := re.match(r"v\.blocks\.(\d+)\.", k)))
    hidden = state_dict["v.blocks.0.mlp.fc1.weight"].shape[0]
    patch = tuple(kernel.shape[2:])
    prefix = 2 if "v.dist_token" in present else 1
    tokens = state_dict["v.pos_embed"].shape[1]
    qkv_bias = "v.blocks.0.attn.qkv.bias" in present
    expected = _expected_shapes(dim, depth, hidden, patch, labels, tokens, qkv_bias, prefix, in_channels)
    missing, unexpected = set(expected) - present, present - set(expected)
    if missing or unexpected:
        raise ValueError("the checkpoint's keys do not match the original AST layout: "
                         + "; ".join(part for part in (f"missing {_listing(missing)}" if missing else "",
                                                       f"unexpected {_listing(unexpected)}" if unexpected else "")
                                     if part))
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {shape})" for k, shape in expected.items()
             if tuple(state_dict[k].shape) != shape]
    if wrong:
        raise ValueError(f"shapes fit no AST configuration (D={dim}, {depth} blocks, MLP {hidden}, patch "
                         f"{patch[0]}x{patch[1]}, {labels} labels): {'; '.join(wrong[:4])}"
                         f"{' ...' if len(wrong) > 4 else ''}")
    if tokens <= prefix:
        raise ValueError(f"v.pos_embed holds {tokens} positions; an AST needs {prefix} token positions plus patches")
    if dim % 64:
        raise ValueError(f"hidden size {dim} is not a multiple of 64, so the number of heads cannot be inferred "
                         f"(the authors' models use 64 dims per head: D=192/384/768 -> 3/6/12 heads)")
    pretraining_input = tuple(int(state_dict[k]) for k in PRETRAINING_INPUT_KEYS) if pretraining else None
    return SourceArchitecture(dim, depth, dim // 64, hidden, patch, labels, tokens - prefix, qkv_bias, prefix,
                              pretraining_input)


# --------------------------------------------------------------------------------------------------------------
# Geometry: strides and input length
# --------------------------------------------------------------------------------------------------------------


def parse_released_name(name: str) -> dict | None:
    """`audioset_10_10_0.4593.pth` -> {dataset, fstride, tstride, score}; None for other names."""
    match = RELEASED_NAME.match(Path(name).name)
    if match is None:
        return None
    return {"dataset": match["dataset"], "fstride": int(match["fstride"]), "tstride": int(match["tstride"]),
            "score": float(match["score"])}


@dataclass(frozen=True)
class Geometry:
    """Patch strides and the frame range that gives the source's grid (any length in it: the same model)."""

    fstride: int
    tstride: int
    grid: tuple[int, int]  # (frequency patches, time patches)
    min_frames: int
    max_frames: int

    def describe(self) -> str:
        return (f"fstride={self.fstride} tstride={self.tstride} ({self.grid[0]}x{self.grid[1]} patches, "
                f"{self.min_frames}-{self.max_frames} frames)")


def solve_geometry(num_patches: int, *, num_mel_bins: int = 128, patch_size: int | tuple[int, int] = 16,
                   fstride: int | None = None, tstride: int | None = None, input_tdim: int | None = None,
                   preferred_tdim: int | None = None) -> Geometry:
    """Strides (and frame range) that turn `num_mel_bins` x T inputs into exactly `num_patches` patches.

    Unknown strides are searched in 1..patch side; a patch that spans every mel bin (SSAST "Frame", 128x2) gives
    one frequency patch whatever the stride, recorded as the patch height (SSAST's Frame recipe). Among several
    solutions, equal strides are preferred; then, when `input_tdim` is unknown, those whose frame range holds
    `preferred_tdim` (the dataset's usual length). Raises ValueError when nothing fits, or listing the candidates
    when several remain.
    """
    patch_f, patch_t = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    if num_mel_bins < patch_f:
        raise ValueError(f"num_mel_bins {num_mel_bins} is smaller than the {patch_f}x{patch_t} patch (mel bins x "
                         f"frames)")
    for name, value in (("fstride", fstride), ("tstride", tstride), ("input_tdim", input_tdim)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if input_tdim is not None and input_tdim < patch_t:
        raise ValueError(f"input_tdim {input_tdim} is shorter than one {patch_f}x{patch_t} patch ({patch_t} frames)")
    frequency_strides = [fstride] if fstride else [patch_f] if patch_f == num_mel_bins else range(1, patch_f + 1)
    candidates = []
    for fs in frequency_strides:
        f = (num_mel_bins - patch_f) // fs + 1
        if num_patches % f:
            continue
        t = num_patches // f
        for ts in [tstride] if tstride else range(1, patch_t + 1):
            low, high = patch_t + (t - 1) * ts, patch_t + t * ts - 1
            if input_tdim is None or low <= input_tdim <= high:
                candidates.append(Geometry(fs, ts, (f, t), low, high))
    given = ", ".join(f"{k}={v}" for k, v in (("fstride", fstride), ("tstride", tstride), ("input_tdim", input_tdim),
                                               ("num_mel_bins", num_mel_bins)) if v is not None)
    if not candidates:
        raise ValueError(f"no patch geometry gives the checkpoint's {num_patches} patch tokens from its {patch_f}x"
                         f"{patch_t} patches (mel bins x frames) with {given}; check --fstride/--tstride/--input-tdim/"
                         f"--num-mel-bins")
    equal = [c for c in candidates if c.fstride == c.tstride]
    if equal:
        candidates = equal
    if len(candidates) > 1 and input_tdim is None and preferred_tdim is not None:
        candidates = [c for c in candidates if c.min_frames <= preferred_tdim <= c.max_frames] or candidates
    if len(candidates) > 1:
        raise ValueError(f"{num_patches} patch tokens fit several geometries ({given}): "
                         f"{'; '.join(c.describe() for c in candidates[:8])}"
                         f"{' ...' if len(candidates) > 8 else ''}; pass --fstride, --tstride and --input-tdim")
    return candidates[0]


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original keys (no `module.`) -> `ASTForAudioClassification` keys; qkv [3D, D] split into query/key/value."""
    backbone = BACKBONE_PREFIX
    renames = {"v.cls_token": backbone + "embeddings.cls_token",
               "v.dist_token": backbone + "embeddings.distillation_token",
               "v.pos_embed": backbone + "embeddings.position_embeddings",
               "v.patch_embed.proj.": backbone + "embeddings.patch_embeddings.projection.",
               "v.norm.": backbone + "layernorm.", "mlp_head.0.": "classifier.layernorm.",
               "mlp_head.1.": "classifier.dense."}
    block_parts = {"norm1.": "layernorm_before.", "norm2.": "layernorm_after.", "attn.proj.": "attention.output.dense.",
                   "mlp.fc1.": "intermediate.dense.", "mlp.fc2.": "output.dense."}
    out = {}
    for key, tensor in state_dict.items():
        if key.startswith(DROPPED_PREFIXES):
            continue
        block = re.match(r"v\.blocks\.(\d+)\.(.*)", key)
        if block is None:
            old = next(o for o in renames if key == o or (o.endswith(".") and key.startswith(o)))
            out[renames[old] + key[len(old):]] = tensor
            continue
        layer, rest = f"{backbone}encoder.layer.{block[1]}.", block[2]
        if rest.startswith("attn.qkv."):  # timm: rows [q; k; v], heads contiguous inside each
            for name, part in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                out[f"{layer}attention.attention.{name}.{rest.split('.')[-1]}"] = part
        else:
            old = next(o for o in block_parts if rest.startswith(o))
            out[layer + block_parts[old] + rest[len(old):]] = tensor
    return out


def original_tokens(state_dict: Mapping[str, torch.Tensor], input_values: torch.Tensor, *, fstride: int,
                    tstride: int, num_heads: int, position_embeddings: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Tokens after the final `v.norm` of the authors' AST / SSAST backbone, straight from its state dict.

    A functional transcription of the original code (timm 0.4.5 DeiT blocks, eps 1e-6; exact GELU), independent
    of `ASTModel`; the patch shape and the prefix tokens (cls, and `v.dist_token` if present) come from the keys.

    Args:
        state_dict: keys without `module.` (`v.*`).
        input_values: [batch, frames, mel bins] normalised fbank.
        position_embeddings: [1, prefix + f * t, D] to use instead of `v.pos_embed` (inputs of another length).
        dtype: precision of the computation (float64: a reference for float32 models).

    Returns:
        [batch, prefix + f * t, D] in `dtype`.
    """
    def w(key):
        return state_dict[key].to(dtype) if key in state_dict else None

    x = input_values.to(dtype).unsqueeze(1).transpose(2, 3)  # [B, 1, F, T]: frequency is the image height
    x = F.conv2d(x, w("v.patch_embed.proj.weight"), w("v.patch_embed.proj.bias"), stride=(fstride, tstride))
    x = x.flatten(2).transpose(1, 2)
    batch, dim = x.shape[0], x.shape[-1]
    prefix = [w(k).expand(batch, -1, -1) for k in ("v.cls_token", "v.dist_token") if k in state_dict]
    x = torch.cat([*prefix, x], dim=1)
    x = x + (w("v.pos_embed") if position_embeddings is None else position_embeddings.to(dtype))
    tokens, head_dim = x.shape[1], dim // num_heads
    depth = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("v.blocks."))
    for i in range(depth):
        p = f"v.blocks.{i}."
        h = F.layer_norm(x, (dim,), w(p + "norm1.weight"), w(p + "norm1.bias"), eps=ORIGINAL_LAYER_NORM_EPS)
        qkv = F.linear(h, w(p + "attn.qkv.weight"), w(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(batch, tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * head_dim ** -0.5).softmax(dim=-1)
        h = (attention @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + F.linear(h, w(p + "attn.proj.weight"), w(p + "attn.proj.bias"))
        h = F.layer_norm(x, (dim,), w(p + "norm2.weight"), w(p + "norm2.bias"), eps=ORIGINAL_LAYER_NORM_EPS)
        h = F.linear(F.gelu(F.linear(h, w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias"))),
                     w(p + "mlp.fc2.weight"), w(p + "mlp.fc2.bias"))
        x = x + h
    return F.layer_norm(x, (dim,), w("v.norm.weight"), w("v.norm.bias"), eps=ORIGINAL_LAYER_NORM_EPS)


def original_forward(state_dict: Mapping[str, torch.Tensor], input_values: torch.Tensor, *, fstride: int,
                     tstride: int, num_heads: int, position_embeddings: torch.Tensor | None = None,
                     pooling: str = "cls", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Logits of the authors' `ASTModel` (AST, or a fine-tuned SSAST), computed straight from its state dict.

    `original_tokens`, then the pooling: "cls" (the AST; SSAST's `ft_cls`: the mean of the 1 or 2 prefix tokens)
    or "mean" (SSAST's `ft_avgtok`: the mean of the patch tokens), then `mlp_head` (LayerNorm eps 1e-5 + Linear).

    Returns:
        [batch, num_labels] logits in `dtype`.
    """
    x = original_tokens(state_dict, input_values, fstride=fstride, tstride=tstride, num_heads=num_heads,
                        position_embeddings=position_embeddings, dtype=dtype)
    prefix = 2 if "v.dist_token" in state_dict else 1
    if pooling == "mean":
        pooled = x[:, prefix:].mean(dim=1)
    else:
        pooled = (x[:, 0] + x[:, 1]) / 2 if prefix == 2 else x[:, 0]
    head = {k: state_dict[k].to(dtype) for k in ("mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.1.weight",
                                                 "mlp_head.1.bias")}
    pooled = F.layer_norm(pooled, (x.shape[-1],), head["mlp_head.0.weight"], head["mlp_head.0.bias"],
                          eps=ORIGINAL_CLASSIFIER_LAYER_NORM_EPS)
    return F.linear(pooled, head["mlp_head.1.weight"], head["mlp_head.1.bias"])


# --------------------------------------------------------------------------------------------------------------
# Labels and model card
# --------------------------------------------------------------------------------------------------------------


def _resolve_labels(labels: str | Path | None, num_labels: int) -> tuple[dict[int, str], DatasetInfo | None, str]:
    """(id2label, dataset the statistics come from, where the names come from)."""
    choice = "none" if labels is None else str(labels)
    key = dataset_key(choice)
    generic = generic_id2label(num_labels)
    if key in ("auto", "none"):
        dataset = dataset_for_num_labels(num_labels)
        if key == "none" or dataset is None:
            return generic, dataset, "nowhere (generic LABEL_i names)"
        return load_label_table(dataset.name), dataset, f"the {dataset.title} label table ({dataset.label_file})"
    if not Path(choice).suffix and not Path(choice).exists():
        dataset = dataset_for_name(choice)
        if dataset is None:
            raise ValueError(f"--labels {choice!r} is neither a CSV file nor one of auto, none, "
                             f"{', '.join(DATASETS)}")
        if dataset.num_labels != num_labels:
            raise ValueError(f"--labels {choice}: {dataset.title} has {dataset.num_labels} labels but the checkpoint's "
                             f"head has {num_labels}; pass a CSV with {num_labels} rows, or 'none'")
        return load_label_table(dataset.name), dataset, f"the {dataset.title} label table ({dataset.label_file})"
    id2label = load_label_table(choice)
    if len(id2label) != num_labels:
        raise ValueError(f"label table {choice} has {len(id2label)} labels but the checkpoint's head has {num_labels}")
    return id2label, dataset_for_num_labels(num_labels), f"`{Path(choice).name}`"


def render_model_card(**fields) -> str:
    """Fill `model_cards/template.md` (see `model_cards/README.md` for the placeholders)."""
    template = (Path(__file__).parent / "model_cards" / "template.md").read_text(encoding="utf-8")
    try:
        return Template(template).substitute(fields)
    except KeyError as error:
        raise ValueError(f"model card placeholder {error} was not given") from None


def _card_fields(*, config: ASTConfig, source: Path, sha256: str, released: dict | None, dataset: DatasetInfo | None,
                 label_source: str, mean: float, std: float, dtype: str, max_abs_diff: float, repo_id: str,
                 source_tdim: int, is_ssast: bool, is_backbone: bool) -> dict:
    from . import __version__

    multi = config.problem_type == "multi_label_classification"
    if released is not None:
        known = dataset_for_name(released["dataset"])
        reported = f"{known.metric if known else 'score'} {released['score']} (as stated in the released file name)"
    else:
        reported = "not stated (the file name does not follow the released `{dataset}_{fstride}_{tstride}_{score}.pth`)"
    f, t = config.patch_grid()
    adaptation = ""
    if source_tdim != config.max_length:
        adaptation = (f"The position embeddings were adapted from the source's {source_tdim}-frame grid to "
                      f"{config.max_length} frames with the authors' rule (centre cut when shorter, bilinear when "
                      f"longer; time axis first).\n\n")
    family_note = ""
    if is_ssast:
        family_note = ("The source is a self-supervised AST (SSAST; Gong, Lai, Chung and Glass, AAAI 2022), written by "
                       "[YuanGongND/ssast](https://github.com/YuanGongND/ssast); the pooled output is "
                       + ("the mean of the patch tokens (SSAST's `ft_avgtok`)" if config.pooling == "mean" else
                          "the mean of the prefix tokens (SSAST's `ft_cls`)") + ".\n\n")
    if is_backbone:
        family_note += (f"This folder is the pretrained backbone (no classification head; the pretext-task heads were "
                        f"dropped), recorded at its pretraining grid of {f} x {t} patches. Fine-tune it as SSAST does: "
                        f"`ASTForAudioClassification.from_pretrained(\"{repo_id}\", num_labels=L, "
                        f"frequency_stride=10, time_stride=10, max_length=T)` keeps the patch kernel, cuts or resizes "
                        f"the position embeddings from the pretraining grid and adds a fresh head.\n\n")
    transformers_note = (
        "Plain `transformers` loads this folder too; its AST uses the backbone eps in the head LayerNorm as well "
        "(1e-6 instead of the authors' 1e-5), which moves the logits by about 1e-5."
        if config.is_transformers_compatible else
        f"Plain `transformers` cannot compute this model (pooling {config.pooling!r}, {config.num_prefix_tokens} "
        f"prefix token(s), {config.patch_shape[0]} x {config.patch_shape[1]} patches): `config.json` has model type "
        f"`{config.to_dict()['model_type']}`, which its Auto classes refuse; load it with `ast-hf`.")
    return dict(
        title=repo_id, repo_id=repo_id, family_note=family_note, transformers_note=transformers_note,
        ssast_citation=SSAST_CITATION if is_ssast else "",
        patch_shape=f"{config.patch_shape[0]} x {config.patch_shape[1]}",
        datasets_yaml=f"datasets:\n- {dataset.name}\n" if dataset is not None else "",
        source_name=source.name, source_sha256=sha256, reported_score=reported,
        labels_summary=("none (a pretrained backbone)" if is_backbone else f"{config.num_labels} ({dataset.title})"
                        if dataset is not None else f"{config.num_labels}"),
        label_source=label_source,
        problem_type="none (fine-tune first)" if is_backbone else config.problem_type or "single_label_classification",
        hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        frequency_stride=config.frequency_stride, time_stride=config.time_stride,
        max_length=config.max_length, seconds=f"{config.max_length / 100:g}", num_mel_bins=config.num_mel_bins,
        grid=f"{f} x {t}", layer_norm_eps=config.layer_norm_eps,
        classifier_layer_norm_eps=config.classifier_layer_norm_eps, dtype=dtype,
        dtype_note="" if dtype == "float32" else f" and the cast to {dtype}",
        adaptation_note=adaptation, mean=mean, std=std,
        stats_note=(f" ({dataset.title} training-set statistics)" if dataset is not None else
                    " (AudioSet statistics: the source's own are not stored in the checkpoint; edit "
                    "`preprocessor_config.json` if it was trained with others)"),
        function_arg=', function_to_apply="sigmoid"' if multi else "",
        scores_note=("Labels are not exclusive (multi-label), so each score is an independent sigmoid probability; "
                     "`problem_type` in `config.json` makes the pipeline use a sigmoid by default."
                     if multi else "Labels are exclusive, so scores are softmax probabilities that sum to one."),
        score_fn="sigmoid" if multi else "softmax",
        max_abs_diff=f"{max_abs_diff:.2e}", ast_hf_version=__version__,
    )


# --------------------------------------------------------------------------------------------------------------
# The converter
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ConversionResult:
    """What `convert_original_checkpoint` wrote; usable as a path (`os.fspath(result)`)."""

    path: Path
    config: ASTConfig
    max_abs_diff: float
    source_sha256: str
    notes: list[str] = field(default_factory=list)

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass
class _Plan:
    """Everything inferred about a source before any weight is converted."""

    config: ASTConfig
    geometry: Geometry
    dataset: DatasetInfo | None
    label_source: str
    released: dict | None
    notes: list[str]
    is_ssast: bool = False
    is_backbone: bool = False  # an SSAST self-supervised checkpoint: no head, an `ASTModel` folder


def _dropped_notes(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """One note per group of source keys that the folder leaves out."""
    notes = []
    for what, prefixes in (("the unused DeiT ImageNet heads", DEIT_HEADS), ("SSAST's pretext-task heads (masked-patch "
                           "classification and reconstruction; fine-tuning never uses them)", PRETEXT_HEADS)):
        dropped = [k for k in state_dict if k.startswith(prefixes)]
        if dropped:
            notes.append(f"dropped {what}: {', '.join(dropped)}")
    return notes


def _plan_pretraining_backbone(arch: SourceArchitecture, source_name: str, pooling: str | None,
                               flags: dict[str, int | None]) -> _Plan:
    """An SSAST self-supervised checkpoint: a backbone config whose patch grid is the pretraining one."""
    fdim, tdim = arch.pretraining_input
    given = [f"--{name.replace('_', '-')}" for name, value in flags.items() if value is not None]
    if given:
        raise ValueError(f"{source_name} is an SSAST self-supervised checkpoint: it stores its pretraining input "
                         f"({fdim} mel bins x {tdim} frames, stride = patch), so {', '.join(given)} do not apply; "
                         f"choose the fine-tuning geometry when loading the folder: ASTForAudioClassification."
                         f"from_pretrained(OUT, num_labels=L, frequency_stride=F, time_stride=S, max_length=T)")
    patch_f, patch_t = arch.patch_size
    grid = patch_grid(fdim, tdim, arch.patch_size, patch_f, patch_t)
    if grid[0] * grid[1] != arch.num_patches:
        raise ValueError(f"{source_name}: p_input_fdim={fdim}, p_input_tdim={tdim} with {patch_f}x{patch_t} patches "
                         f"give a {grid[0]}x{grid[1]} grid, but v.pos_embed holds {arch.num_patches} patch positions")
    config = ASTConfig(
        hidden_size=arch.hidden_size, num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads, intermediate_size=arch.intermediate_size, hidden_act="gelu",
        layer_norm_eps=ORIGINAL_LAYER_NORM_EPS, classifier_layer_norm_eps=ORIGINAL_CLASSIFIER_LAYER_NORM_EPS,
        patch_size=arch.patch_size, qkv_bias=arch.qkv_bias, frequency_stride=patch_f, time_stride=patch_t,
        max_length=tdim, num_mel_bins=fdim, pooling=pooling or "mean", num_prefix_tokens=arch.num_prefix_tokens,
        architectures=["ASTModel"])
    notes = [f"SSAST self-supervised checkpoint: pretraining input {fdim} mel bins x {tdim} frames, "
             f"{patch_f}x{patch_t} patches at stride = patch, grid {grid[0]}x{grid[1]}, {arch.num_prefix_tokens} "
             f"prefix token(s); recorded in config.json (num_mel_bins, max_length, strides) for fine-tuning",
             f"pooling {config.pooling!r} for fine-tuning" + ("" if pooling else " (SSAST's default ft_avgtok; "
                                                               "--pooling cls for ft_cls)")]
    return _Plan(config, Geometry(patch_f, patch_t, grid, tdim, tdim), None, "nowhere (a backbone has no labels)",
                 None, notes, is_ssast=True, is_backbone=True)


def plan_conversion(state_dict: Mapping[str, torch.Tensor], source_name: str, *, fstride: int | None = None,
                    tstride: int | None = None, input_tdim: int | None = None, num_mel_bins: int = 128,
                    labels: str | Path | None = "auto", pooling: str | None = None) -> _Plan:
    """Infer the `ASTConfig` of an original state dict (see `convert_original_checkpoint` for the arguments)."""
    arch = inspect_original_state_dict(state_dict)
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if arch.pretraining_input is not None:
        if labels is not None and dataset_key(str(labels)) not in ("auto", "none"):
            # a backbone has no head to name: the labels would be dropped without a word
            raise ValueError(f"{source_name} is an SSAST self-supervised checkpoint without a classification head, so "
                             f"--labels {labels} does not apply; name the labels when fine-tuning the folder: "
                             f"ASTForAudioClassification.from_pretrained(OUT, num_labels=L, id2label=...)")
        plan = _plan_pretraining_backbone(arch, source_name, pooling,
                                          dict(fstride=fstride, tstride=tstride, input_tdim=input_tdim))
        plan.notes[:0] = _dropped_notes(state_dict)
        return plan
    if pooling is None and not arch.is_ast_shaped:
        raise ValueError(f"{source_name} is a fine-tuned SSAST checkpoint ({arch.patch_size[0]}x{arch.patch_size[1]} "
                         f"patches, {arch.num_prefix_tokens} prefix token(s)), whose pooling is not stored: pass "
                         f"--pooling mean (SSAST's ft_avgtok, the default of its recipes) or --pooling cls (ft_cls)")
    notes = _dropped_notes(state_dict)
    released = parse_released_name(source_name)
    if released is not None:
        for name, given in (("fstride", fstride), ("tstride", tstride)):
            if given is not None and given != released[name]:
                notes.append(f"--{name} {given} overrides the file name's {released[name]}")
        fstride = fstride if fstride is not None else released["fstride"]
        tstride = tstride if tstride is not None else released["tstride"]

    id2label, dataset, label_source = _resolve_labels(labels, arch.num_labels)
    preferred = dataset.max_length if dataset is not None else None
    try:
        geometry = solve_geometry(arch.num_patches, num_mel_bins=num_mel_bins, patch_size=arch.patch_size,
                                  fstride=fstride, tstride=tstride, input_tdim=input_tdim, preferred_tdim=preferred)
    except ValueError as error:
        if released is None:
            raise
        raise ValueError(f"{error} (the strides come from the file name {source_name}; override them with --fstride "
                         f"and --tstride if it was renamed)") from None
    if fstride is None or tstride is None:
        notes.append(f"strides solved from the {arch.num_patches} patch tokens: {geometry.describe()}")
    if input_tdim is None:
        fits = preferred is not None and geometry.min_frames <= preferred <= geometry.max_frames
        input_tdim = preferred if fits else geometry.min_frames
        notes.append(f"input length {input_tdim} frames inferred (any of {geometry.min_frames}-"
                     f"{geometry.max_frames} gives the same model); set it with --input-tdim")

    problem_type = dataset.problem_type if dataset is not None else "single_label_classification"
    config = ASTConfig(
        hidden_size=arch.hidden_size, num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads, intermediate_size=arch.intermediate_size, hidden_act="gelu",
        layer_norm_eps=ORIGINAL_LAYER_NORM_EPS, classifier_layer_norm_eps=ORIGINAL_CLASSIFIER_LAYER_NORM_EPS,
        patch_size=arch.patch_size, qkv_bias=arch.qkv_bias, frequency_stride=geometry.fstride,
        time_stride=geometry.tstride, max_length=input_tdim, num_mel_bins=num_mel_bins, id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        problem_type="multi_label_classification" if arch.num_labels == 1 else problem_type,  # 1 output: BCE
        pooling=pooling or "cls", num_prefix_tokens=arch.num_prefix_tokens,
        architectures=["ASTForAudioClassification"])
    # --pooling is only needed (and only given) for SSAST fine-tunes; the AST has one pooling.
    return _Plan(config, geometry, dataset, label_source, released, notes,
                 is_ssast=pooling is not None or not arch.is_ast_shaped)


def verification_input(num_frames: int, num_mel_bins: int, batch: int = 2) -> torch.Tensor:
    """The fixed [batch, frames, mel bins] input the converter checks logits on (seeded, std 0.5 like real input)."""
    generator = torch.Generator().manual_seed(0)
    return 0.5 * torch.randn(batch, num_frames, num_mel_bins, generator=generator)


def _verify(folder: Path, source: Mapping[str, torch.Tensor], plan: _Plan, dtype: torch.dtype) -> float:
    """Max |logits(folder) - original_forward(source)| on the fixed input (for a backbone folder: max |tokens -
    original_tokens(source)|); the source is rounded to `dtype`."""
    geometry = plan.geometry
    model_class = ASTModel if plan.is_backbone else ASTForAudioClassification
    model = model_class.from_pretrained(folder, dtype=torch.float32).eval()
    config = model.config
    inputs = verification_input(config.max_length, config.num_mel_bins)
    rounded = {k: v.to(dtype) for k, v in source.items() if not k.startswith(DROPPED_PREFIXES)}
    position = None
    if config.patch_grid() != geometry.grid:  # --max-length: the authors' adaptation of the source's embeddings,
        # resized before rounding to `dtype`, as the saved model holds them (rounding first differs by an ulp)
        position = adapt_position_embeddings(source["v.pos_embed"].double(), geometry.grid, config.patch_grid(),
                                             config.num_prefix_tokens).to(dtype)
    arguments = dict(fstride=geometry.fstride, tstride=geometry.tstride, num_heads=config.num_attention_heads,
                     position_embeddings=position)
    with torch.no_grad():
        if plan.is_backbone:
            reference = original_tokens(rounded, inputs, **arguments)
            ours = model(inputs).last_hidden_state.double()
        else:
            reference = original_forward(rounded, inputs, pooling=config.pooling, **arguments)
            ours = model(inputs).logits.double()
    return float((ours - reference).abs().max())


def convert_original_checkpoint(src: str | Path, out_dir: str | Path, *, fstride: int | None = None,
                                tstride: int | None = None, input_tdim: int | None = None, num_mel_bins: int = 128,
                                max_length: int | None = None, labels: str | Path | None = "auto",
                                pooling: str | None = None, dtype: str = "float32", force: bool = False,
                                push_to_hub: str | None = None) -> ConversionResult:
    """Convert an original AST or SSAST checkpoint into a folder that `from_pretrained` loads.

    AST checkpoints give folders that plain `transformers` loads too; SSAST ones use what only ast-hf expresses
    (mean pooling, 1 prefix token, non-square patches) and are saved so that plain `transformers` refuses them.

    Args:
        src: the authors' `.pth` (state dict, with or without `module.`, or a training checkpoint holding one).
        out_dir: folder to create; it must not exist unless `force`.
        fstride, tstride: patch strides (mel bins, frames); default: from a released name, else solved.
        input_tdim: frames the source was trained on; default: solved (the dataset's usual length if it fits).
        num_mel_bins: mel bins of the source's input (128 for every released model).
        max_length: frames to adapt the position embeddings to (authors' rule); default: the source's length.
        labels: "auto" (from the label count), "audioset", "esc50", "speechcommands", a CSV path, or "none".
            The dataset (input statistics, length, problem type) follows the label count unless named here.
        pooling: a fine-tuned SSAST's pooling, "mean" (`ft_avgtok`) or "cls" (`ft_cls`); required for SSAST
            checkpoints that are not AST-shaped, default "cls" (the AST). For an SSAST self-supervised checkpoint,
            the pooling its fine-tunes will use (default "mean"); fstride, tstride, input_tdim, max_length and
            labels other than "auto"/"none" are refused for it (the folder keeps the pretraining grid and has no
            head; choose them in `from_pretrained`).
        dtype: "float32", "float16" or "bfloat16" for the stored weights.
        force: replace an existing `out_dir`.
        push_to_hub: a Hub repo id to upload the folder to once it is written and verified.

    Returns:
        `ConversionResult` (path, config, max abs logit difference, source sha256, notes on what was inferred).

    Raises:
        FileNotFoundError, FileExistsError, ValueError (bad input), ConversionError (logits differ by more than
        `VERIFY_TOLERANCE`). On any failure, and on Ctrl-C, no output folder is left behind.
    """
    from .feature_extraction_ast import ASTFeatureExtractor

    src, out_dir = Path(src), Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(max_length, float) and max_length.is_integer():  # `5.12 * 100`: 512 frames, as ASTConfig reads it
        max_length = int(max_length)
    if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1):
        raise ValueError(f"max_length must be a positive whole number of frames, got {max_length!r}")
    check_destination(out_dir, force)  # fail before the long work, not after it
    if out_dir.is_dir() and src.resolve().is_relative_to(out_dir.resolve()):
        # --force replaces the whole folder: the source checkpoint inside it would be deleted with it
        raise ValueError(f"the source {src} is inside the output folder {out_dir}, which --force would replace and "
                         f"so delete the source with it; write the conversion to another folder")
    big = src.is_file() and src.stat().st_size >= SHOW_PROGRESS_BYTES
    progress = tqdm(total=4, desc=f"convert {src.name}", unit="step", disable=not big, leave=False)
    try:
        progress.set_postfix_str("reading")
        state_dict = load_original_state_dict(src)
        plan = plan_conversion(state_dict, src.name, fstride=fstride, tstride=tstride, input_tdim=input_tdim,
                               num_mel_bins=num_mel_bins, labels=labels, pooling=pooling)
        if plan.is_backbone and max_length is not None:
            raise ValueError(f"{src.name} is an SSAST self-supervised checkpoint: --max-length does not apply (the "
                             f"folder keeps the pretraining grid); pass max_length= to from_pretrained instead")
        sha256 = sha256_of(src)
        progress.update()

        progress.set_postfix_str("converting")
        source_tdim = plan.config.max_length
        weights = {k: v.float() for k, v in convert_state_dict(state_dict).items()}
        if plan.is_backbone:
            model = ASTModel(plan.config).eval()
            weights = {k.removeprefix(BACKBONE_PREFIX): v for k, v in weights.items()}
        else:
            model = ASTForAudioClassification(plan.config).eval()
        model.load_state_dict(weights, strict=True)
        if max_length is not None and max_length != source_tdim:
            model.resize_max_length(max_length)
        model.to(DTYPES[dtype])
        stats = plan.dataset or DATASETS["audioset"]  # unknown dataset: AudioSet's, the feature extractor's default
        extractor = ASTFeatureExtractor(num_mel_bins=model.config.num_mel_bins, max_length=model.config.max_length,
                                        mean=stats.mean, std=stats.std)
        progress.update()

        with atomic_folder(out_dir, force=force) as staging:
            progress.set_postfix_str("writing")
            model.save_pretrained(staging)
            extractor.save_pretrained(staging)
            progress.update()
            progress.set_postfix_str("verifying")
            diff = _verify(staging, state_dict, plan, DTYPES[dtype])
            if not diff <= VERIFY_TOLERANCE:  # also catches NaN
                raise ConversionError(f"verification failed: the converted model's logits differ from the "
                                      f"source's by {diff:.3g} > {VERIFY_TOLERANCE:g}; nothing was written")
            card = render_model_card(**_card_fields(
                config=model.config, source=src, sha256=sha256, released=plan.released, dataset=plan.dataset,
                label_source=plan.label_source, mean=stats.mean, std=stats.std, dtype=dtype, max_abs_diff=diff,
                repo_id=push_to_hub or out_dir.name, source_tdim=source_tdim, is_ssast=plan.is_ssast,
                is_backbone=plan.is_backbone))
            (staging / "README.md").write_text(card, encoding="utf-8")
        progress.update()
    finally:
        progress.close()
    logger.info("converted %s -> %s (max |logit difference| %.2e)", src, out_dir, diff)
    if push_to_hub:
        _push(out_dir, push_to_hub, src.name)
    return ConversionResult(out_dir, model.config, diff, sha256, plan.notes)


def _push(folder: Path, repo_id: str, source_name: str) -> None:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=f"Convert {source_name} with ast-hf")
    except Exception as error:  # network, auth, offline mode: the verified folder stays
        raise OSError(f"the folder was written to {folder}, but pushing it to {repo_id} failed: {_one_line(error)}; "
                      f"retry with `hf upload {repo_id} {folder}`") from error


__all__ = ["convert_original_checkpoint", "ConversionResult", "ConversionError", "load_original_state_dict",
           "plan_conversion",
           "inspect_original_state_dict", "convert_state_dict", "original_forward", "original_tokens", "solve_geometry",
           "parse_released_name", "render_model_card", "VERIFY_TOLERANCE"]
