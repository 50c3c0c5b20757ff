"""`from_imagenet`: an AST initialised from a DeiT checkpoint by the AST authors' `imagenet_pretrain=True` rule, from
timm's layout (`{'model': state_dict}` .pth, .safetensors) and from a `transformers` DeiT folder. Small random DeiTs
are built here in both layouts and the model is compared with the independent forward of tests/test_convert.py run
on the weights the authors' code would make (the position rule transcribed below)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

from ast_hf import ASTForAudioClassification, ASTModel
from test_convert import original_state_dict, random_input, reference_logits, reference_tokens

pytestmark = pytest.mark.numeric

TOL = 1e-4


def authors_imagenet_position_embeddings(pos_embed, hw, f_dim, t_dim, prefix=2):
    """The AST authors' `ASTModel.__init__` (imagenet_pretrain=True) position code, transcribed."""
    dim = pos_embed.shape[-1]
    new = pos_embed[:, prefix:, :].detach().reshape(1, hw * hw, dim).transpose(1, 2).reshape(1, dim, hw, hw)
    if t_dim <= hw:
        new = new[:, :, :, int(hw / 2) - int(t_dim / 2): int(hw / 2) - int(t_dim / 2) + t_dim]
    else:
        new = F.interpolate(new, size=(hw, t_dim), mode="bilinear")
    if f_dim <= hw:
        new = new[:, :, int(hw / 2) - int(f_dim / 2): int(hw / 2) - int(f_dim / 2) + f_dim, :]
    else:
        new = F.interpolate(new, size=(f_dim, t_dim), mode="bilinear")
    new = new.reshape(1, dim, f_dim * t_dim).transpose(1, 2)
    return torch.cat([pos_embed[:, :prefix, :].detach(), new], dim=1)


def timm_deit(dim, depth, hw, *, prefix_tokens=2, seed=0):
    """A seeded random DeiT in timm's layout: the AST layout without `v.`, an RGB kernel, ImageNet heads."""
    sd = original_state_dict(dim, depth, None, (hw, hw), seed=seed, prefix="", prefix_tokens=prefix_tokens)
    sd = {k.removeprefix("v."): v for k, v in sd.items()}
    sd["patch_embed.proj.weight"] = torch.randn(dim, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) / 16
    if prefix_tokens == 1:
        del sd["head_dist.weight"], sd["head_dist.bias"]
    return sd


def audio_weights(deit, model, hw, grid, prefix=2):
    """What the authors' code makes of a timm DeiT, in their `v.*` layout, with `model`'s fresh head."""
    sd = {f"v.{k}": v for k, v in deit.items() if not k.startswith("head")}
    sd["v.patch_embed.proj.weight"] = deit["patch_embed.proj.weight"].sum(dim=1).unsqueeze(1)
    sd["v.pos_embed"] = authors_imagenet_position_embeddings(deit["pos_embed"], hw, *grid, prefix=prefix)
    head = model.classifier
    sd.update({"mlp_head.0.weight": head.layernorm.weight.detach(), "mlp_head.0.bias": head.layernorm.bias.detach(),
               "mlp_head.1.weight": head.dense.weight.detach(), "mlp_head.1.bias": head.dense.bias.detach()})
    return sd


CASES = [
    # id, dim, depth, DeiT grid (14: 224 px, 24: 384 px), prefix tokens, strides, frames, audio grid
    ("224-cut", 64, 1, 14, 2, (10, 10), 128, (12, 12)),  # both axes cut from the centre
    ("384-resize", 64, 2, 24, 2, (10, 10), 1024, (12, 101)),  # time resized, frequency cut
    ("small-grid", 128, 1, 4, 2, (16, 12), 200, (8, 16)),  # both axes resized
    ("no-distillation", 64, 1, 14, 1, (10, 10), 300, (12, 29)),  # a non-distilled DeiT: one prefix token
]


@pytest.mark.parametrize("file_format", ["pth", "safetensors"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_timm_layout_matches_the_authors_rule(tmp_path, case, file_format):
    name, dim, depth, hw, prefix, (fs, ts), frames, grid = case
    deit = timm_deit(dim, depth, hw, prefix_tokens=prefix, seed=len(name))
    path = tmp_path / f"deit.{file_format}"
    if file_format == "pth":
        torch.save({"model": deit}, path)  # the DeiT release files' layout
    else:
        save_file({k: v.contiguous() for k, v in deit.items()}, path)
    model = ASTForAudioClassification.from_imagenet(path, num_labels=7, frequency_stride=fs, time_stride=ts,
                                                    max_length=frames).eval()
    config = model.config
    assert config.patch_grid() == grid and config.num_labels == 7 and config.num_prefix_tokens == prefix
    assert (config.layer_norm_eps, config.head_layer_norm_eps) == (1e-6, 1e-5)
    reference = audio_weights(deit, model, hw, grid, prefix)
    embeddings = model.audio_spectrogram_transformer.embeddings
    assert (embeddings.position_embeddings.detach() - reference["v.pos_embed"]).abs().max() <= 1e-6
    x = random_input(2, frames, seed=2)
    with torch.no_grad():
        ours = model(x).logits.double()
    assert (ours - reference_logits(reference, x, fstride=fs, tstride=ts, heads=dim // 64)).abs().max() <= TOL


def transformers_deit_folder(folder, *, dim=64, depth=2, heads=4, image_size=64, seed=0):
    """A small random `DeiTForImageClassificationWithTeacher` saved by transformers, every parameter re-drawn (no
    zero bias, no identity LayerNorm), with transformers' DeiT default LayerNorm eps 1e-12 in its config."""
    config = transformers.DeiTConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                                     intermediate_size=2 * dim, image_size=image_size, patch_size=16)
    model = transformers.DeiTForImageClassificationWithTeacher(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 1 / 16 if "projection" in name else param.shape[-1] ** -0.5 if param.ndim == 2 else 0.3
            param.copy_(torch.randn(param.shape, generator=g) * scale + (1.0 if "layernorm" in name and
                                                                          name.endswith("weight") else 0.0))
    model.save_pretrained(folder)
    assert config.layer_norm_eps == 1e-12
    return image_size // 16


def original_layout(folder, depth):
    """The saved transformers DeiT's weights (on-disk names) in timm's layout (query/key/value stacked into qkv),
    written independently of ast-hf's key mapping."""
    from safetensors.torch import load_file

    sd = {k.removeprefix("deit."): v for k, v in load_file(folder / "model.safetensors").items()}
    out = {"cls_token": sd["embeddings.cls_token"], "dist_token": sd["embeddings.distillation_token"],
           "pos_embed": sd["embeddings.position_embeddings"],
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    for i in range(depth):
        p = f"encoder.layer.{i}."
        names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
                 "mlp.fc2": "output.dense"}
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{kind}"] = sd[f"{p}{theirs}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[f"{p}attention.attention.{n}.{kind}"]
                                                            for n in ("query", "key", "value")])
            out[f"blocks.{i}.attn.proj.{kind}"] = sd[f"{p}attention.output.dense.{kind}"]
    return out


@pytest.mark.parametrize("frames,strides", [(100, (10, 10)), (40, (12, 6))])
def test_transformers_folder_matches_the_authors_rule(tmp_path, frames, strides):
    hw = transformers_deit_folder(tmp_path / "deit", seed=frames)
    model = ASTForAudioClassification.from_imagenet(tmp_path / "deit", num_labels=3, frequency_stride=strides[0],
                                                    time_stride=strides[1], max_length=frames).eval()
    assert (model.config.layer_norm_eps, model.config.num_attention_heads) == (1e-6, 4)  # not the config's 1e-12
    deit = original_layout(tmp_path / "deit", depth=2)
    grid = model.config.patch_grid()
    reference = audio_weights(deit, model, hw, grid)
    x = random_input(2, frames, seed=4)
    with torch.no_grad():
        ours = model(x).logits.double()
    assert (ours - reference_logits(reference, x, fstride=strides[0], tstride=strides[1], heads=4)).abs().max() <= TOL
    backbone = ASTModel.from_imagenet(tmp_path / "deit", frequency_stride=strides[0], time_stride=strides[1],
                                      max_length=frames).eval()
    with torch.no_grad():
        tokens = backbone(x).last_hidden_state.double()
    expected = reference_tokens(reference, x, fstride=strides[0], tstride=strides[1], heads=4)
    assert (tokens - expected).abs().max() <= TOL


def test_imagenet_model_saves_and_reloads(tmp_path):
    torch.save({"model": timm_deit(64, 1, 14)}, tmp_path / "deit.pth")
    model = ASTForAudioClassification.from_imagenet(tmp_path / "deit.pth", num_labels=4, max_length=128).eval()
    model.save_pretrained(tmp_path / "ast")
    again = ASTForAudioClassification.from_pretrained(tmp_path / "ast").eval()
    x = random_input(1, 128)
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)


def test_files_of_other_architectures_are_refused(tmp_path):
    transformers.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                           image_size=32).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="type 'vit'"):
        ASTForAudioClassification.from_imagenet(tmp_path / "vit", num_labels=2)
    torch.save(original_state_dict(64, 1, 5, (12, 12)), tmp_path / "ast.pth")
    with pytest.raises(ValueError, match="AST or SSAST checkpoint"):
        ASTForAudioClassification.from_imagenet(tmp_path / "ast.pth", num_labels=2)
    torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}},
               tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="not a timm DeiT checkpoint.*conv1.weight"):
        ASTForAudioClassification.from_imagenet(tmp_path / "resnet.pth", num_labels=2)
    deit = timm_deit(64, 1, 14)
    deit["patch_embed.proj.weight"] = deit["patch_embed.proj.weight"][:, :1]  # a one-channel kernel
    torch.save({"model": deit}, tmp_path / "gray.pth")
    with pytest.raises(ValueError, match="1-channel patch kernel"):
        ASTForAudioClassification.from_imagenet(tmp_path / "gray.pth", num_labels=2)
    deit = timm_deit(64, 1, 14)
    deit["pos_embed"] = deit["pos_embed"][:, :-3]
    torch.save({"model": deit}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="not a square image grid"):
        ASTForAudioClassification.from_imagenet(tmp_path / "odd.pth", num_labels=2)
    with pytest.raises(FileNotFoundError):
        ASTForAudioClassification.from_imagenet(tmp_path / "missing.pth", num_labels=2)


def test_unreadable_weight_files_are_refused_with_a_value_error(tmp_path):
    """A corrupt pytorch_model.bin or .safetensors is a ValueError naming the file (it was torch's or safetensors'
    own traceback, torch's suggesting weights_only=False), and a readable pytorch_model.bin still loads."""
    from safetensors.torch import load_file

    transformers_deit_folder(tmp_path / "deit", seed=1)
    weights = load_file(tmp_path / "deit" / "model.safetensors")
    (tmp_path / "deit" / "model.safetensors").unlink()
    torch.save(weights, tmp_path / "deit" / "pytorch_model.bin")
    from_bin = ASTModel.from_imagenet(tmp_path / "deit", max_length=100)
    expected = weights["deit.embeddings.patch_embeddings.projection.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(from_bin.embeddings.patch_embeddings.projection.weight.detach(), expected)

    (tmp_path / "deit" / "pytorch_model.bin").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ValueError, match="pytorch_model.bin is not a readable PyTorch checkpoint"):
        ASTModel.from_imagenet(tmp_path / "deit")
    (tmp_path / "deit" / "model.safetensors").write_bytes(b"not safetensors" * 8)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        ASTModel.from_imagenet(tmp_path / "deit")
    (tmp_path / "deit.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="deit.safetensors is not a readable safetensors file"):
        ASTModel.from_imagenet(tmp_path / "deit.safetensors")
