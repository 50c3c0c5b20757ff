"""ImageNet initialisation of an AST from a DeiT checkpoint: the AST authors' `imagenet_pretrain=True` path.

The authors (YuanGongND/ast, `ASTModel(imagenet_pretrain=True, audioset_pretrain=False)`) start from timm 0.4.5's
distilled DeiTs `vit_deit_{tiny,small,base}_distilled_patch16_224` and `vit_deit_base_distilled_patch16_384`, whose
weights are the DeiT release files `dl.fbaipublicfiles.com/deit/deit_{tiny,small,base}_distilled_patch16_224-*.pth`
and `deit_base_distilled_patch16_384-*.pth` (`{'model': state_dict}`). The same weights are on the Hub as
`facebook/deit-{tiny,small,base}-distilled-patch16-224` and `facebook/deit-base-distilled-patch16-384`
(`transformers`' `DeiTForImageClassificationWithTeacher` layout). Both layouts are read here.

The rule: the RGB patch kernel [D, 3, p, p] is summed over its channels into the one-channel kernel the
spectrogram needs (the bias kept), the cls and distillation tokens, blocks and final LayerNorm are kept, the
ImageNet heads dropped; the position embeddings stay on the DeiT's square grid (14 x 14 at 224 px, 24 x 24 at
384 px) until `ASTPreTrainedModel.from_imagenet` cuts or resizes them to the audio patch grid with
`adapt_position_embeddings`. The backbone LayerNorm eps is timm's 1e-6, which the weights were trained with,
whatever a `transformers` DeiT `config.json` says (it carries transformers' default 1e-12).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .configuration_ast import ORIGINAL_CLASSIFIER_LAYER_NORM_EPS, ORIGINAL_LAYER_NORM_EPS, ASTConfig
from .convert import BACKBONE_PREFIX, convert_state_dict, inspect_original_state_dict, load_original_state_dict

KERNEL = "embeddings.patch_embeddings.projection.weight"
POSITIONS = "embeddings.position_embeddings"
# `transformers` DeiT heads (with teacher, plain, pooled): no audio task uses them.
TRANSFORMERS_DEIT_HEADS = ("cls_classifier.", "distillation_classifier.", "classifier.", "deit.pooler.")


@dataclass(frozen=True)
class DeiTBackbone:
    """A DeiT's weights under `ASTModel` names, before the audio geometry is chosen.

    Attributes:
        state_dict: `ASTModel` keys; the patch kernel [D, 1, p, p] (RGB summed), the position embeddings
            [1, prefix + hw * hw, D] still on the DeiT grid.
        grid: (hw, hw) DeiT patch grid of the position embeddings.
        config_fields: the `ASTConfig` fields the weights fix (widths, depth, heads, patch, prefix tokens, eps).
    """

    state_dict: dict[str, torch.Tensor]
    grid: tuple[int, int]
    config_fields: dict


def deit_backbone(source: str | Path) -> DeiTBackbone:
    """Read a DeiT in timm's layout (a `.pth` or `.safetensors` file) or a `transformers` DeiT folder.

    Raises:
        FileNotFoundError: no such file or folder. ValueError: a file or folder of another architecture (an AST
        or SSAST checkpoint, another `transformers` model type, keys or shapes no DeiT has), naming what was found.
    """
    path = Path(source)
    if path.is_dir():
        state_dict, fields = _read_transformers_deit(path)
    elif path.is_file():
        state_dict, fields = _read_timm_deit(path)
    else:
        raise FileNotFoundError(f"no DeiT checkpoint at {path}: give a timm .pth/.safetensors file or a transformers "
                                f"DeiT folder (e.g. a local copy of facebook/deit-base-distilled-patch16-384)")
    fields.update(hidden_act="gelu", layer_norm_eps=ORIGINAL_LAYER_NORM_EPS,
                  classifier_layer_norm_eps=ORIGINAL_CLASSIFIER_LAYER_NORM_EPS)
    patches = state_dict[POSITIONS].shape[1] - fields["num_prefix_tokens"]
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"{path.name}: the position embeddings hold {patches} patch positions, not a square image "
                         f"grid; not a DeiT/ViT image model")
    state_dict[KERNEL] = state_dict[KERNEL].sum(dim=1, keepdim=True)  # RGB -> one spectrogram channel
    return DeiTBackbone(state_dict, (side, side), fields)


def _read_timm_deit(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """timm's keys (`cls_token`, `blocks.N.attn.qkv`, ...) are the AST authors' `v.*` ones: reuse the converter."""
    if path.suffix == ".safetensors":
        state_dict = _load_safetensors(path)
    else:
        state_dict = load_original_state_dict(path)
    if "v.cls_token" in state_dict:
        raise ValueError(f"{path.name} is an AST or SSAST checkpoint (keys v.*), not an ImageNet DeiT: convert it with "
                         f"`ast-hf convert` and load the folder with from_pretrained")
    if "cls_token" not in state_dict or "patch_embed.proj.weight" not in state_dict:
        keys = sorted(state_dict)
        raise ValueError(f"{path.name} is not a timm DeiT checkpoint: it has no cls_token / patch_embed.proj.weight "
                         f"(keys start with {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''})")
    original = {f"v.{key}": tensor for key, tensor in state_dict.items()}
    arch = inspect_original_state_dict(original, in_channels=3, kind=f"a timm DeiT checkpoint ({path.name})")
    ast_names = {key.removeprefix(BACKBONE_PREFIX): tensor.float()
                 for key, tensor in convert_state_dict(original).items()}
    fields = dict(hidden_size=arch.hidden_size, num_hidden_layers=arch.num_hidden_layers,
                  num_attention_heads=arch.num_attention_heads, intermediate_size=arch.intermediate_size,
                  patch_size=arch.patch_size, qkv_bias=arch.qkv_bias, num_prefix_tokens=arch.num_prefix_tokens)
    return ast_names, fields


def _read_transformers_deit(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """`transformers` writes DeiT as `deit.embeddings.*`, `deit.encoder.layer.N.*`, `deit.layernorm.*`: the AST's
    own names under another prefix."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json: not a transformers model folder (a timm checkpoint is a "
                         f".pth or .safetensors file; pass the file)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") != "deit":
        raise ValueError(f"{folder} holds a transformers model of type {config.get('model_type')!r} "
                         f"({', '.join(config.get('architectures') or ['no architectures listed'])}), not a DeiT "
                         f"(model_type 'deit', e.g. facebook/deit-base-distilled-patch16-384)")
    if config.get("num_channels", 3) != 3:
        raise ValueError(f"{folder}: a DeiT with {config['num_channels']} input channels; expected an RGB ImageNet "
                         f"model")
    if (folder / "model.safetensors").is_file():
        state_dict = _load_safetensors(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        # the converter's safe reader: weights_only=True, and a one-line ValueError for a corrupt or code-running
        # pickle (torch's own error is a traceback that suggests weights_only=False)
        state_dict = load_original_state_dict(folder / "pytorch_model.bin")
    else:
        raise ValueError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
    ast_names = {key.removeprefix("deit."): tensor.float() for key, tensor in state_dict.items()
                 if not key.startswith(TRANSFORMERS_DEIT_HEADS)}
    patch = config.get("patch_size", 16)
    fields = dict(hidden_size=config.get("hidden_size", 768), num_hidden_layers=config.get("num_hidden_layers", 12),
                  num_attention_heads=config.get("num_attention_heads", 12),
                  intermediate_size=config.get("intermediate_size", 3072), patch_size=patch,
                  qkv_bias=config.get("qkv_bias", True), num_prefix_tokens=2)  # transformers' DeiT: cls + distillation
    ast_names.pop("embeddings.mask_token", None)  # masked-image-modelling checkpoints only
    if KERNEL not in ast_names or POSITIONS not in ast_names:
        raise ValueError(f"{folder}: the weights lack deit.{KERNEL} or deit.{POSITIONS} (keys start with "
                         f"{', '.join(sorted(state_dict)[:4])}); not a DeiT image classifier")
    _check_backbone_shapes(folder.name, ast_names, fields)
    return ast_names, fields


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; a ValueError naming the file for one that is truncated or not safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as error:
        raise ValueError(f"{path.name} is not a readable safetensors file (truncated, corrupt or another format; "
                         f"size {path.stat().st_size} bytes): {error}") from None


def _check_backbone_shapes(name: str, state_dict: Mapping[str, torch.Tensor], fields: dict) -> None:
    """Every `ASTModel` weight present with its shape (the kernel still RGB), nothing else: a ValueError naming the
    differences, rather than torch's load error. (timm-layout files are checked by `inspect_original_state_dict`.)"""
    config = ASTConfig(**fields, num_mel_bins=fields["patch_size"] if isinstance(fields["patch_size"], int)
                       else fields["patch_size"][0], max_length=1024, frequency_stride=1, time_stride=1)
    from .modeling_ast import ASTModel

    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in ASTModel(config).state_dict().items()}
    wanted[KERNEL] = (wanted[KERNEL][0], 3, *wanted[KERNEL][2:])
    wanted.pop(POSITIONS)  # the DeiT grid, not the audio one
    found = {k: tuple(v.shape) for k, v in state_dict.items() if k != POSITIONS}
    problems = [f"missing {', '.join(sorted(set(wanted) - set(found))[:4])}" if set(wanted) - set(found) else "",
                f"unexpected {', '.join(sorted(set(found) - set(wanted))[:4])}" if set(found) - set(wanted) else "",
                "; ".join(f"{k} {found[k]} (expected {shape})" for k, shape in wanted.items()
                          if k in found and found[k] != shape)]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"{name} does not fit a DeiT (D={fields['hidden_size']}, {fields['num_hidden_layers']} "
                         f"blocks, {fields['num_attention_heads']} heads): {'; '.join(problems)}")


__all__ = ["DeiTBackbone", "deit_backbone"]
