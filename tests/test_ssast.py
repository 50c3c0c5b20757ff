"""SSAST: self-supervised checkpoints -> backbone folders -> SSAST's own fine-tuning initialisation, fine-tuned
checkpoints with either pooling, Frame (128x2) and one-prefix-token models, stride changes on load, the
position-embedding quirks, plain `transformers` refusing what it cannot compute, and bad input.

Ground truth: `../shared/fixtures/ssast` (SSAST's code's own outputs) and, for the cases built here, the independent
float64 forward of tests/test_convert.py (`reference_tokens` / `reference_logits`) and the SSAST position-embedding
code transcribed below (`ssast_position_embeddings`), never the package's own oracle."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import transformers

import ast_hf
from ast_hf import ASTForAudioClassification, ASTModel, convert_original_checkpoint
from ast_hf.cli import main
from ast_hf.convert import convert_state_dict
from test_convert import original_state_dict, random_input, reference_logits

pytestmark = pytest.mark.numeric

TOL = 1e-4
PRETRAIN, FINETUNED = "ssast_tiny_patch_pretrain.pth", "ssast_tiny_patch_f10t10_T128_c35.pth"


def ssast_position_embeddings(pos_embed, pretrain_grid, grid, prefix, *, literal=True):
    """SSAST's `ASTModel.__init__` (pretrain_stage=False) position-embedding code, transcribed line by line.

    literal=True keeps its two quirks: the time resize to `size=(8, t)` and `+ t_dim` in the frequency slice (which
    raises, as in SSAST, when it does not hold f rows); literal=False is that code with `p_f` for 8 and `+ f_dim`.
    """
    p_f, p_t = pretrain_grid
    f_dim, t_dim = grid
    dim = pos_embed.shape[-1]
    new = pos_embed[:, prefix:, :].detach().reshape(1, p_f * p_t, dim).transpose(1, 2).reshape(1, dim, p_f, p_t)
    if t_dim < p_t:
        new = new[:, :, :, p_t // 2 - t_dim // 2: p_t // 2 - t_dim // 2 + t_dim]
    else:
        new = F.interpolate(new, size=(8 if literal else p_f, t_dim), mode="bilinear")
    if f_dim < p_f:
        rows = t_dim if literal else f_dim
        new = new[:, :, p_f // 2 - f_dim // 2: p_f // 2 - f_dim // 2 + rows, :]
    else:
        new = F.interpolate(new, size=(f_dim, t_dim), mode="bilinear")
    new = new.reshape(1, dim, f_dim * t_dim).transpose(1, 2)
    return torch.cat([pos_embed[:, :prefix, :].detach(), new], dim=1)


def set_head(model, head):
    """Copy an SSAST `mlp_head` state dict (`0.*` LayerNorm, `1.*` Linear) into `model.classifier`."""
    with torch.no_grad():
        for ours, theirs in ((model.classifier.layernorm, "0"), (model.classifier.dense, "1")):
            ours.weight.copy_(head[f"{theirs}.weight"])
            ours.bias.copy_(head[f"{theirs}.bias"])


def pretraining_checkpoint(dim, depth, pretrain_input, *, patch=16, prefix_tokens=2, seed=0):
    """A seeded random SSAST self-supervised checkpoint: backbone, pretraining input size, pretext heads."""
    patch_f, patch_t = (patch, patch) if isinstance(patch, int) else patch
    grid = ((pretrain_input[0] - patch_f) // patch_f + 1, (pretrain_input[1] - patch_t) // patch_t + 1)
    sd = original_state_dict(dim, depth, None, grid, seed=seed, patch=patch, prefix_tokens=prefix_tokens)
    g = torch.Generator().manual_seed(seed + 1)
    sd.update({"module.p_input_fdim": torch.tensor(pretrain_input[0]),
               "module.p_input_tdim": torch.tensor(pretrain_input[1]),
               "module.mask_embed": torch.randn(1, 1, dim, generator=g)})
    for task in ("cpredlayer", "gpredlayer"):
        sd.update({f"module.{task}.0.weight": torch.randn(dim, dim, generator=g),
                   f"module.{task}.0.bias": torch.randn(dim, generator=g),
                   f"module.{task}.2.weight": torch.randn(256, dim, generator=g),
                   f"module.{task}.2.bias": torch.randn(256, generator=g)})
    return sd, grid


# --------------------------------------------------------------------------------------------------------------
# The fixtures written by SSAST's code
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssast_ref(ssast_fixtures_dir):
    return torch.load(ssast_fixtures_dir / "ssast_tiny_patch_finetune.ref.pt", weights_only=True)


@pytest.fixture(scope="module")
def backbone_folder(ssast_fixtures_dir, tmp_path_factory):
    return convert_original_checkpoint(ssast_fixtures_dir / PRETRAIN, tmp_path_factory.mktemp("ssl") / "backbone")


def test_pretraining_checkpoint_becomes_a_backbone_folder(backbone_folder):
    notes = " ".join(backbone_folder.notes)
    for dropped in ("mask_embed", "cpredlayer.0.weight", "gpredlayer.2.bias", "v.head.weight", "v.head_dist.bias"):
        assert dropped in notes
    assert "8x64" in notes and backbone_folder.max_abs_diff <= TOL
    cfg = json.loads((backbone_folder.path / "config.json").read_text())
    assert cfg["model_type"] == "ast-hf" and cfg["architectures"] == ["ASTModel"]
    assert (cfg["frequency_stride"], cfg["time_stride"], cfg["max_length"], cfg["num_mel_bins"]) == (16, 16, 1024, 128)
    assert (cfg["pooling"], cfg["num_prefix_tokens"], cfg["layer_norm_eps"]) == ("mean", 2, 1e-6)
    assert ASTModel.from_pretrained(backbone_folder.path).config.patch_grid() == (8, 64)
    card = (backbone_folder.path / "README.md").read_text()
    assert "gong2022ssast" in card and "gong21b_interspeech" in card and "$" not in card


def test_fine_tuning_initialisation_is_ssasts(backbone_folder, ssast_fixtures_dir, ssast_ref):
    model = ASTForAudioClassification.from_pretrained(backbone_folder.path, num_labels=35, frequency_stride=10,
                                                      time_stride=10, max_length=128).eval()
    assert model.config.patch_grid() == tuple(ssast_ref["config"]["finetune_grid"]) == (12, 12)
    embeddings = model.audio_spectrogram_transformer.embeddings
    assert torch.equal(embeddings.position_embeddings.detach(), ssast_ref["pos_embed"])
    assert embeddings.patch_embeddings.projection.stride == (10, 10)
    # every backbone weight is the one SSAST's fine-tuning model started from; the head is fresh
    finetuned = {k.removeprefix("module."): v for k, v in
                 torch.load(ssast_fixtures_dir / FINETUNED, weights_only=True).items()}
    ours = model.state_dict()
    for key, value in convert_state_dict(finetuned).items():
        if not key.startswith("classifier."):
            assert torch.equal(ours[key], value), key
    assert model.classifier.dense.weight.shape == (35, 192) and model.config.num_labels == 35
    assert not torch.equal(model.classifier.dense.weight, ssast_ref["mlp_head"]["1.weight"])
    set_head(model, ssast_ref["mlp_head"])
    with torch.no_grad():
        assert (model(ssast_ref["input"]).logits - ssast_ref["logits_avgtok"]).abs().max() <= TOL
        model.config.pooling = "cls"
        assert (model(ssast_ref["input"]).logits - ssast_ref["logits_cls"]).abs().max() <= TOL


@pytest.mark.parametrize("pooling,expected", [("mean", "logits_avgtok"), ("cls", "logits_cls")])
def test_fine_tuned_checkpoint_converts_to_ssasts_logits(ssast_fixtures_dir, ssast_ref, tmp_path, pooling, expected):
    out = tmp_path / pooling
    assert main(["convert", str(ssast_fixtures_dir / FINETUNED), str(out), "--pooling", pooling, "--input-tdim", "128",
                 "--fstride", "10", "--tstride", "10"]) == 0
    model = ASTForAudioClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert (model(ssast_ref["input"]).logits - ssast_ref[expected]).abs().max() <= TOL
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pooling"] == pooling and len(cfg["id2label"]) == 35
    # SSAST-derived: the card cites it; "mean" pooling is beyond transformers' AST
    assert "gong2022ssast" in (out / "README.md").read_text()
    assert cfg["model_type"] == ("ast-hf" if pooling == "mean" else "audio-spectrogram-transformer")


# --------------------------------------------------------------------------------------------------------------
# Cases built here: Frame 128x2, one prefix token, other sizes, strides and lengths
# --------------------------------------------------------------------------------------------------------------

PRETRAINING_CASES = [
    # id, dim, patch, prefix tokens, pretraining input (mel, frames), fine-tuning (fstride, tstride, frames)
    ("patch-cut", 64, 16, 2, (128, 1024), (10, 10, 128)),     # grid 8x64 -> 12x12: time cut, frequency resize
    ("patch-longer", 128, 16, 1, (128, 256), (16, 8, 400)),  # 8x16 -> 8x49: time resize; base_nokd-like
    ("frame", 64, (128, 2), 2, (128, 1024), (128, 1, 300)),  # 1x512 -> 1x299: Frame, time cut
    ("frame-longer", 64, (128, 2), 1, (128, 200), (128, 1, 300)),  # 1x100 -> 1x299: the 1 -> 8 -> 1 detour
]


@pytest.mark.parametrize("case", PRETRAINING_CASES, ids=[c[0] for c in PRETRAINING_CASES])
def test_pretraining_to_fine_tuning_matches_ssast(tmp_path, case):
    name, dim, patch, prefix, pretrain_input, (fs, ts, frames) = case
    sd, grid = pretraining_checkpoint(dim, 1, pretrain_input, patch=patch, prefix_tokens=prefix, seed=len(name))
    torch.save(sd, tmp_path / "ssl.pth")
    result = convert_original_checkpoint(tmp_path / "ssl.pth", tmp_path / "backbone")
    assert result.max_abs_diff <= TOL and result.config.patch_grid() == grid
    model = ASTForAudioClassification.from_pretrained(tmp_path / "backbone", num_labels=4, frequency_stride=fs,
                                                      time_stride=ts, max_length=frames).eval()
    new_grid = model.config.patch_grid()
    position = model.audio_spectrogram_transformer.embeddings.position_embeddings.detach()
    literal = ssast_position_embeddings(sd["module.v.pos_embed"], grid, new_grid, prefix)
    # released geometries (p_f = 8 Patch, p_f = 1 Frame): SSAST's own values, up to its 1 -> 8 -> 1 float detour
    assert (position - literal).abs().max() <= 1e-6
    # the fine-tuning model computes SSAST's forward with those embeddings and the kept kernel, at the new strides
    head = {"mlp_head.0.weight": model.classifier.layernorm.weight, "mlp_head.0.bias": model.classifier.layernorm.bias,
            "mlp_head.1.weight": model.classifier.dense.weight, "mlp_head.1.bias": model.classifier.dense.bias}
    source = {**sd, **{f"module.{k}": v.detach() for k, v in head.items()}}
    x = random_input(2, frames)
    with torch.no_grad():
        for pooling in ("mean", "cls"):
            model.config.pooling = pooling
            expected = reference_logits(source, x, fstride=fs, tstride=ts, heads=dim // 64, pos_embed=literal,
                                        pooling=pooling)
            assert (model(x).logits.double() - expected).abs().max() <= TOL


@pytest.mark.parametrize("patch,prefix,strides,frames,grid", [
    ((128, 2), 2, (128, 1), 100, (1, 99)),
    ((128, 2), 1, (128, 2), 64, (1, 32)),
    (16, 1, (10, 10), 200, (12, 19)),
])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_fine_tuned_frame_and_one_token_models_convert(tmp_path, patch, prefix, strides, frames, grid, pooling):
    sd = original_state_dict(64, 2, 6, grid, seed=frames + prefix, patch=patch, prefix_tokens=prefix)
    torch.save(sd, tmp_path / "ft.pth")
    result = convert_original_checkpoint(tmp_path / "ft.pth", tmp_path / "out", fstride=strides[0],
                                         tstride=strides[1], input_tdim=frames, pooling=pooling)
    assert result.max_abs_diff <= TOL
    assert result.config.patch_shape == ((128, 2) if patch != 16 else (16, 16))
    assert result.config.num_prefix_tokens == prefix
    x = random_input(2, frames, seed=5)
    model = ASTForAudioClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        ours = model(x).logits.double()
    expected = reference_logits(sd, x, fstride=strides[0], tstride=strides[1], heads=1, pooling=pooling)
    assert (ours - expected).abs().max() <= TOL
    assert "gong2022ssast" in (tmp_path / "out" / "README.md").read_text()


def test_stride_change_on_load_keeps_the_kernel_for_any_ast_folder(tmp_path):
    """An AST fine-tune (12 x 12 grid at 10/10 on 128 frames) reloaded at strides 12/8 and 200 frames: one
    adaptation from the saved grid, as the authors' rule gives it, and the original forward at the new strides."""
    sd = original_state_dict(64, 1, 5, (12, 12), seed=21)
    torch.save(sd, tmp_path / "ast.pth")
    convert_original_checkpoint(tmp_path / "ast.pth", tmp_path / "out", fstride=10, tstride=10, input_tdim=128)
    model = ASTForAudioClassification.from_pretrained(tmp_path / "out", frequency_stride=12, time_stride=8,
                                                      max_length=200).eval()
    assert model.config.patch_grid() == (10, 24)
    embeddings = model.audio_spectrogram_transformer.embeddings
    assert torch.equal(embeddings.patch_embeddings.projection.weight.detach(), sd["module.v.patch_embed.proj.weight"])
    expected_position = ssast_position_embeddings(sd["module.v.pos_embed"], (12, 12), (10, 24), 2, literal=False)
    assert (embeddings.position_embeddings.detach() - expected_position).abs().max() <= 1e-6
    x = random_input(2, 200, seed=3)
    with torch.no_grad():
        ours = model(x).logits.double()
    expected = reference_logits(sd, x, fstride=12, tstride=8, heads=1, pos_embed=expected_position)
    assert (ours - expected).abs().max() <= TOL
    model.save_pretrained(tmp_path / "again")  # the new geometry is what the folder records
    again = ASTForAudioClassification.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        assert (again(x).logits.double() - ours).abs().max() <= 1e-6


# --------------------------------------------------------------------------------------------------------------
# The quirks of SSAST's position-embedding code, outside the released geometries
# --------------------------------------------------------------------------------------------------------------


def test_size_8_quirk_is_not_reproduced_for_other_pretraining_grids():
    """A 4 x 16 pretraining grid (64 mel bins) resized in time: SSAST's code detours through 8 frequency rows and
    changes the values; ast-hf keeps the frequency rows (the AST's rule), i.e. SSAST's code with p_f for 8."""
    from ast_hf import adapt_position_embeddings

    pos = torch.randn(1, 2 + 4 * 16, 8, generator=torch.Generator().manual_seed(0))
    for target in ((4, 30), (6, 30)):
        ours = adapt_position_embeddings(pos, (4, 16), target)
        intended = ssast_position_embeddings(pos, (4, 16), target, 2, literal=False)
        literal = ssast_position_embeddings(pos, (4, 16), target, 2)
        assert (ours - intended).abs().max() <= 1e-6
        assert (ours - literal).abs().max() > 1e-2  # the quirk would have changed them


def test_t_dim_slice_quirk_gives_the_centre_cut_where_ssast_raises():
    from ast_hf import adapt_position_embeddings

    pos = torch.randn(1, 2 + 12 * 101, 8, generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError):  # SSAST: rows [3, 3 + 50) of 12 is 9 rows, not 6 -> its reshape fails
        ssast_position_embeddings(pos, (12, 101), (6, 50), 2)
    ours = adapt_position_embeddings(pos, (12, 101), (6, 50))
    assert torch.equal(ours, ssast_position_embeddings(pos, (12, 101), (6, 50), 2, literal=False))
    # where the slice happens to hold f rows (t == f) SSAST's result is the same centre cut
    assert torch.equal(adapt_position_embeddings(pos, (12, 101), (6, 6)),
                       ssast_position_embeddings(pos, (12, 101), (6, 6), 2))


# --------------------------------------------------------------------------------------------------------------
# Padded batches with mean pooling; plain transformers refuses what it cannot compute
# --------------------------------------------------------------------------------------------------------------


def test_mean_pooling_in_a_padded_batch_averages_each_clips_real_patches():
    from conftest import tiny_config

    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(pooling="mean", patch_size=(128, 2), frequency_stride=128,
                                                  time_stride=2, num_prefix_tokens=1)).eval()
    clips = [random_input(1, n, seed=n) for n in (128, 90, 40)]
    batch = torch.zeros(3, 128, 128)
    mask = torch.zeros(3, 128, dtype=torch.long)
    for i, clip in enumerate(clips):
        batch[i, :clip.shape[1]] = clip[0]
        mask[i, :clip.shape[1]] = 1
    with torch.no_grad():
        together = model(batch, attention_mask=mask).logits
        for i, clip in enumerate(clips):
            assert (together[i] - model(clip).logits[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("fields", [dict(pooling="mean"), dict(num_prefix_tokens=1),
                                    dict(patch_size=(128, 2), frequency_stride=128, time_stride=1)])
def test_plain_transformers_refuses_what_it_cannot_compute(tmp_path, fields):
    from conftest import tiny_config

    model = ASTForAudioClassification(tiny_config(**fields)).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "ast-hf"
    for auto in (transformers.AutoConfig, transformers.AutoModel, transformers.AutoModelForAudioClassification):
        with pytest.raises(ValueError, match="model type `ast-hf`"):
            auto.from_pretrained(tmp_path)
    ast_hf.register()
    try:  # with ast-hf's classes registered, the Auto classes build them
        loaded = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path)
        assert isinstance(loaded, ASTForAudioClassification)
        assert all(getattr(loaded.config, k) == getattr(model.config, k) for k in fields)
    finally:
        ast_hf.unregister()
    with pytest.raises(ValueError, match="model type `ast-hf`"):
        transformers.AutoConfig.from_pretrained(tmp_path)


def test_square_pair_patch_stays_a_transformers_folder(tmp_path):
    from conftest import tiny_config

    ASTForAudioClassification(tiny_config(patch_size=[16, 16])).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["patch_size"] == 16 and cfg["model_type"] == "audio-spectrogram-transformer"
    assert type(transformers.AutoModelForAudioClassification.from_pretrained(tmp_path)).__module__.startswith(
        "transformers.")


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


def test_bad_input_gives_errors_naming_what_was_found(tmp_path, capsys):
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an AST or SSAST checkpoint.*decoder.bias"):
        convert_original_checkpoint(tmp_path / "other.pth", tmp_path / "o1")
    backbone_only = original_state_dict(64, 1, None, (12, 12), seed=1)
    torch.save(backbone_only, tmp_path / "headless.pth")
    with pytest.raises(ValueError, match="neither a classification head.*p_input_fdim"):
        convert_original_checkpoint(tmp_path / "headless.pth", tmp_path / "o2")

    frame = original_state_dict(64, 1, 4, (1, 99), seed=2, patch=(128, 2))
    torch.save(frame, tmp_path / "frame.pth")
    assert main(["convert", str(tmp_path / "frame.pth"), str(tmp_path / "o3"), "--fstride", "10", "--tstride", "10",
                 "--input-tdim", "128", "--pooling", "mean"]) == 1
    assert "128x2 patches" in capsys.readouterr().err  # the patch shape does not fit these strides
    with pytest.raises(ValueError, match="--pooling mean"):  # a Frame fine-tune's pooling is not stored
        convert_original_checkpoint(tmp_path / "frame.pth", tmp_path / "o4", fstride=128, tstride=1, input_tdim=100)

    ssl, _ = pretraining_checkpoint(64, 1, (128, 256), seed=3)
    torch.save(ssl, tmp_path / "ssl.pth")
    with pytest.raises(ValueError, match="SSAST self-supervised.*--fstride"):
        convert_original_checkpoint(tmp_path / "ssl.pth", tmp_path / "o5", fstride=10)
    with pytest.raises(ValueError, match="without a classification head, so --labels esc50 does not apply"):
        convert_original_checkpoint(tmp_path / "ssl.pth", tmp_path / "o6", labels="esc50")  # was dropped silently
    convert_original_checkpoint(tmp_path / "ssl.pth", tmp_path / "backbone")
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        ASTForAudioClassification.from_pretrained(tmp_path / "backbone", max_length=8)
    with pytest.raises(ValueError, match="time_stride 20 does not fit the 16x16 patch"):
        ASTForAudioClassification.from_pretrained(tmp_path / "backbone", time_stride=20)
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3", "o4", "o5", "o6"))
