"""The converter: original AST checkpoints -> Hub-ready folders, checked against the authors' code's logits and
against an independent forward pass written here (patches by `unfold`, attention by `einsum`, LayerNorm and
GELU by hand, float64), never against the converter's own `original_forward`."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ast_hf import ASTForAudioClassification, ConversionError, convert_original_checkpoint
from ast_hf.cli import main
from ast_hf.convert import load_original_state_dict, original_forward, parse_released_name, solve_geometry

pytestmark = pytest.mark.numeric

TOL = 1e-4  # the bar for converted logits
FIXTURE = "tiny224_f10t10_T128_c35"


# --------------------------------------------------------------------------------------------------------------
# An independent reference: the authors' model re-derived from the paper / timm, in float64
# --------------------------------------------------------------------------------------------------------------


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def reference_tokens(state_dict, x, *, fstride, tstride, heads, pos_embed=None):
    """Tokens [B, prefix + f * t, D] after the final LayerNorm of the original AST / SSAST backbone (float64);
    the patch shape and the prefix tokens (cls, and dist_token when present) are read off the keys."""
    sd = {k.removeprefix("module."): v.double() for k, v in state_dict.items() if v.is_floating_point()}
    weight = sd["v.patch_embed.proj.weight"][:, 0]  # [D, patch mel bins, patch frames]
    patch_f, patch_t = weight.shape[-2:]
    image = x.double().transpose(1, 2)  # [B, F, T]: frequency is the image height
    patches = image.unfold(1, patch_f, fstride).unfold(2, patch_t, tstride)  # [B, f, t, patch_f, patch_t]
    tokens = torch.einsum("bftij,dij->bftd", patches, weight) + sd["v.patch_embed.proj.bias"]
    batch, f, t, dim = tokens.shape
    tokens = tokens.reshape(batch, f * t, dim)  # frequency-major
    prefix = [sd[k].expand(batch, 1, dim) for k in ("v.cls_token", "v.dist_token") if k in sd]
    z = torch.cat([*prefix, tokens], 1)
    z = z + (sd["v.pos_embed"] if pos_embed is None else pos_embed.double())
    hd = dim // heads
    depth = len({k.split(".")[2] for k in sd if k.startswith("v.blocks.")})
    for i in range(depth):
        b = lambda name: sd[f"v.blocks.{i}.{name}"]  # noqa: E731
        h = _layer_norm(z, b("norm1.weight"), b("norm1.bias"), 1e-6)
        qkv = h @ b("attn.qkv.weight").T + b("attn.qkv.bias")
        q, k, v = (qkv[..., j * dim:(j + 1) * dim].reshape(batch, -1, heads, hd) for j in range(3))
        att = torch.softmax(torch.einsum("bqhc,bkhc->bhqk", q, k) / math.sqrt(hd), dim=-1)
        h = torch.einsum("bhqk,bkhc->bqhc", att, v).reshape(batch, -1, dim)
        z = z + h @ b("attn.proj.weight").T + b("attn.proj.bias")
        h = _layer_norm(z, b("norm2.weight"), b("norm2.bias"), 1e-6) @ b("mlp.fc1.weight").T + b("mlp.fc1.bias")
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        z = z + h @ b("mlp.fc2.weight").T + b("mlp.fc2.bias")
    return _layer_norm(z, sd["v.norm.weight"], sd["v.norm.bias"], 1e-6)


def reference_logits(state_dict, x, *, fstride, tstride, heads, pos_embed=None, pooling="cls"):
    """Logits [B, labels] of the original AST (pooling "cls": mean of the prefix tokens) or a fine-tuned SSAST
    ("mean": `ft_avgtok`, mean of the patch tokens) for input x [B, T, F] (float64)."""
    sd = {k.removeprefix("module."): v.double() for k, v in state_dict.items()}
    z = reference_tokens(state_dict, x, fstride=fstride, tstride=tstride, heads=heads, pos_embed=pos_embed)
    prefix = 2 if "v.dist_token" in sd else 1
    pooled = z[:, :prefix].mean(1) if pooling == "cls" else z[:, prefix:].mean(1)
    pooled = _layer_norm(pooled, sd["mlp_head.0.weight"], sd["mlp_head.0.bias"], 1e-5)
    return pooled @ sd["mlp_head.1.weight"].T + sd["mlp_head.1.bias"]


def original_state_dict(dim, depth, labels, grid, *, seed=0, patch=16, prefix="module.", mlp=None, prefix_tokens=2):
    """A seeded random checkpoint in the authors' layout (DataParallel prefix, DeiT heads included); `patch` an int
    or (mel bins, frames); `labels` None for no `mlp_head` (an SSAST pretraining backbone)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=1.0: torch.randn(*shape, generator=g) * s  # noqa: E731
    mlp = mlp or 4 * dim
    f, t = grid
    patch_f, patch_t = (patch, patch) if isinstance(patch, int) else patch
    sd = {"v.cls_token": r(1, 1, dim, s=0.5), "v.pos_embed": r(1, prefix_tokens + f * t, dim, s=0.5)}
    if prefix_tokens == 2:
        sd["v.dist_token"] = r(1, 1, dim, s=0.5)
    sd.update({"v.patch_embed.proj.weight": r(dim, 1, patch_f, patch_t, s=1 / patch_f),
               "v.patch_embed.proj.bias": r(dim, s=0.1)})
    for i in range(depth):
        p = f"v.blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(dim, s=0.1), p + "norm1.bias": r(dim, s=0.1),
                   p + "attn.qkv.weight": r(3 * dim, dim, s=dim ** -0.5), p + "attn.qkv.bias": r(3 * dim, s=0.1),
                   p + "attn.proj.weight": r(dim, dim, s=dim ** -0.5), p + "attn.proj.bias": r(dim, s=0.1),
                   p + "norm2.weight": 1 + r(dim, s=0.1), p + "norm2.bias": r(dim, s=0.1),
                   p + "mlp.fc1.weight": r(mlp, dim, s=dim ** -0.5), p + "mlp.fc1.bias": r(mlp, s=0.1),
                   p + "mlp.fc2.weight": r(dim, mlp, s=mlp ** -0.5), p + "mlp.fc2.bias": r(dim, s=0.1)})
    sd.update({"v.norm.weight": 1 + r(dim, s=0.1), "v.norm.bias": r(dim, s=0.1),
               "v.head.weight": r(1000, dim), "v.head.bias": r(1000), "v.head_dist.weight": r(1000, dim),
               "v.head_dist.bias": r(1000)})
    if labels is not None:
        sd.update({"mlp_head.0.weight": 1 + r(dim, s=0.1), "mlp_head.0.bias": r(dim, s=0.1),
                   "mlp_head.1.weight": r(labels, dim, s=dim ** -0.5), "mlp_head.1.bias": r(labels, s=0.1)})
    return {prefix + k: v for k, v in sd.items()}


def our_logits(folder, x, **kwargs):
    model = ASTForAudioClassification.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(x).logits.double()


def assert_nothing_left(parent: Path, keep=()):
    """No output folder and no staging folder next to it."""
    left = sorted(p.name for p in parent.iterdir() if p.name not in keep)
    assert left == [], f"left behind: {left}"


def random_input(batch, frames, mel=128, seed=1):
    return 0.5 * torch.randn(batch, frames, mel, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------------
# The checkpoint written by the authors' code
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_ref(fixtures_dir):
    return torch.load(fixtures_dir / f"{FIXTURE}.ref.pt", weights_only=True)


@pytest.fixture(scope="module")
def converted_fixture(fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fixture") / "speechcommands-tiny"
    result = convert_original_checkpoint(fixtures_dir / f"{FIXTURE}.pth", out)
    return result


def test_reference_forwards_reproduce_the_original_code(fixtures_dir, fixture_ref):
    """Both oracles (this file's and the converter's) agree with the authors' code's own logits."""
    sd = torch.load(fixtures_dir / f"{FIXTURE}.pth", weights_only=True)
    x, expected = fixture_ref["input"], fixture_ref["logits"].double()
    assert expected.abs().max() > 0.5  # logits large enough for 1e-4 to be a real bar
    ours = reference_logits(sd, x, fstride=10, tstride=10, heads=3)
    assert (ours - expected).abs().max() <= TOL
    tool = original_forward(load_original_state_dict(fixtures_dir / f"{FIXTURE}.pth"), x, fstride=10, tstride=10,
                            num_heads=3)
    assert (tool - expected).abs().max() <= TOL


def test_fixture_converts_to_the_original_logits(converted_fixture, fixture_ref, fixtures_dir):
    result = converted_fixture
    folder = result.path
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                         "preprocessor_config.json"]
    assert result.max_abs_diff <= TOL
    logits = our_logits(folder, fixture_ref["input"])
    assert (logits - fixture_ref["logits"].double()).abs().max() <= TOL

    cfg = json.loads((folder / "config.json").read_text())
    ref_cfg = fixture_ref["config"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (192, 12, 3)
    assert (cfg["frequency_stride"], cfg["time_stride"], cfg["max_length"]) == (ref_cfg["fstride"],
                                                                               ref_cfg["tstride"], 128)
    assert (cfg["layer_norm_eps"], cfg["classifier_layer_norm_eps"]) == (1e-6, 1e-5)
    with open(fixtures_dir.parent.parent / "labels" / "speechcommands_class_labels_indices.csv") as f:
        names = {int(row["index"]): row["display_name"] for row in csv.DictReader(f)}
    assert {int(k): v for k, v in cfg["id2label"].items()} == names
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert (pre["mean"], pre["std"], pre["max_length"]) == (-6.845978, 5.5654526, 128)


def test_fixture_folder_loads_in_plain_transformers(converted_fixture, fixture_ref):
    import transformers

    folder = converted_fixture.path
    model = transformers.ASTForAudioClassification.from_pretrained(folder).eval()
    assert type(model).__module__.startswith("transformers.")
    with torch.no_grad():
        logits = model(fixture_ref["input"]).logits.double()
    # transformers' head LayerNorm uses the backbone eps (1e-6, not 1e-5): ~1e-5 on these logits.
    assert (logits - fixture_ref["logits"].double()).abs().max() <= TOL
    extractor = transformers.ASTFeatureExtractor.from_pretrained(folder)
    assert (extractor.mean, extractor.std, extractor.max_length) == (-6.845978, 5.5654526, 128)


def test_model_card(converted_fixture, fixtures_dir):
    card = (converted_fixture.path / "README.md").read_text()
    digest = hashlib.sha256((fixtures_dir / f"{FIXTURE}.pth").read_bytes()).hexdigest()
    assert digest in card and f"{FIXTURE}.pth" in card
    assert "license: bsd-3-clause" in card and "Interspeech" in card and "gong21b_interspeech" in card
    assert 'pipeline("audio-classification"' in card and "softmax" in card
    assert "$" not in card.replace("$$", "")  # every placeholder filled


# --------------------------------------------------------------------------------------------------------------
# Seeded random checkpoints: sizes, strides, lengths, label counts
# --------------------------------------------------------------------------------------------------------------

CASES = [
    # name, dim, depth, labels, fstride, tstride, frames, mel bins, converter kwargs
    ("small_12_12_custom.pth", 384, 1, 7, 12, 12, 200, 128, dict(fstride=12, tstride=12, input_tdim=200)),
    ("audioset_16_16_0.4422.pth", 192, 2, 527, 16, 16, 1024, 128, {}),  # strides from the released name
    ("mixed.pth", 192, 2, 10, 10, 12, 300, 128, dict(fstride=10, tstride=12, input_tdim=300)),
    ("esc.pth", 128, 2, 50, 10, 10, 512, 128, {}),  # strides and length solved (ESC-50: 512 frames)
    ("mel64.pth", 64, 1, 3, 8, 6, 100, 64, dict(fstride=8, tstride=6, input_tdim=100, num_mel_bins=64)),
]


@pytest.mark.parametrize("name,dim,depth,labels,fs,ts,frames,mel,kwargs", CASES, ids=[c[0] for c in CASES])
def test_random_checkpoints_match_independent_forward(tmp_path, name, dim, depth, labels, fs, ts, frames, mel,
                                                      kwargs):
    grid = ((mel - 16) // fs + 1, (frames - 16) // ts + 1)
    sd = original_state_dict(dim, depth, labels, grid, seed=len(name))
    src = tmp_path / name
    torch.save(sd, src)
    result = convert_original_checkpoint(src, tmp_path / "out", **kwargs)
    cfg = result.config
    assert (cfg.frequency_stride, cfg.time_stride, cfg.num_labels) == (fs, ts, labels)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (dim, depth, dim // 64)
    assert cfg.patch_grid() == grid and cfg.max_length == frames and cfg.num_mel_bins == mel
    x = random_input(2, frames, mel)
    expected = reference_logits(sd, x, fstride=fs, tstride=ts, heads=dim // 64)
    assert expected.std() > 0.3
    assert (our_logits(result.path, x) - expected).abs().max() <= TOL
    assert result.max_abs_diff <= TOL


def test_audioset_name_gives_multilabel_config_and_card(tmp_path):
    sd = original_state_dict(64, 1, 527, (12, 101), seed=3)
    src = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save(sd, src)
    result = convert_original_checkpoint(src, tmp_path / "out")
    cfg = json.loads((result.path / "config.json").read_text())
    assert cfg["problem_type"] == "multi_label_classification"
    assert cfg["id2label"]["0"] == "Speech" and len(cfg["id2label"]) == 527
    assert (cfg["frequency_stride"], cfg["time_stride"], cfg["max_length"]) == (10, 10, 1024)
    pre = json.loads((result.path / "preprocessor_config.json").read_text())
    assert (pre["mean"], pre["std"], pre["max_length"]) == (-4.2677393, 4.5689974, 1024)
    card = (result.path / "README.md").read_text()
    assert "mAP 0.4593" in card and 'function_to_apply="sigmoid"' in card and "- audioset" in card


def test_audioset_pipeline_gives_sigmoid_scores(tmp_path):
    from transformers import pipeline

    sd = original_state_dict(64, 1, 527, (12, 101), seed=4)
    src = tmp_path / "audioset_10_10_0.4483.pth"
    torch.save(sd, src)
    folder = convert_original_checkpoint(src, tmp_path / "out").path
    classify = pipeline("audio-classification", model=str(folder))
    audio = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32) * 0.5
    scores = classify({"raw": audio, "sampling_rate": 16000}, top_k=None)
    assert len(scores) == 527 and sum(s["score"] for s in scores) > 2  # sigmoid, not softmax
    inputs = classify.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        probs = classify.model(**inputs).logits[0].sigmoid()
    assert abs(scores[0]["score"] - float(probs.max())) <= 1e-5


def test_prefix_absent_and_training_checkpoint(tmp_path):
    sd = original_state_dict(64, 1, 5, (12, 12), seed=7)
    bare = {k.removeprefix("module."): v for k, v in sd.items()}
    wrapped = {"epoch": 12, "best_acc": 0.5, "state_dict": sd, "optimizer": {"lr": 1e-5, "step": torch.tensor(3)}}
    x = random_input(2, 128)
    expected = reference_logits(sd, x, fstride=10, tstride=10, heads=1)
    for i, obj in enumerate((sd, bare, wrapped)):
        src = tmp_path / f"ckpt{i}.pth"
        torch.save(obj, src)
        out = convert_original_checkpoint(src, tmp_path / f"out{i}", fstride=10, tstride=10, input_tdim=128).path
        assert (our_logits(out, x) - expected).abs().max() <= TOL


def test_legacy_serialization_loads(tmp_path):
    sd = original_state_dict(64, 1, 5, (12, 12), seed=8)
    src = tmp_path / "legacy.pth"
    torch.save(sd, src, _use_new_zipfile_serialization=False)  # torch < 1.6 format: no mmap
    out = convert_original_checkpoint(src, tmp_path / "out", fstride=10, tstride=10, input_tdim=128).path
    x = random_input(1, 128)
    assert (our_logits(out, x) - reference_logits(sd, x, fstride=10, tstride=10, heads=1)).abs().max() <= TOL


def test_max_length_adapts_like_the_original_code(tmp_path, fixtures_dir):
    """--max-length 512 on a 1024-frame source gives the original code's adapted embeddings and logits."""
    fixture = torch.load(fixtures_dir / "adapt_512.pt", weights_only=True)
    sd = original_state_dict(768, 1, 10, (12, 101), seed=9, mlp=64)
    sd["module.v.pos_embed"] = fixture["base_pos_embed"]
    src = tmp_path / "base.pth"
    torch.save(sd, src)
    result = convert_original_checkpoint(src, tmp_path / "out", fstride=10, tstride=10, input_tdim=1024,
                                         max_length=512)
    assert result.config.max_length == 512 and result.max_abs_diff <= TOL
    with safe_open(result.path / "model.safetensors", "pt") as f:
        pos = f.get_tensor("audio_spectrogram_transformer.embeddings.position_embeddings")
    assert pos.shape == fixture["pos_embed"].shape
    assert (pos - fixture["pos_embed"]).abs().max() <= 1e-6
    x = random_input(1, 512)
    expected = reference_logits(sd, x, fstride=10, tstride=10, heads=12, pos_embed=fixture["pos_embed"])
    assert (our_logits(result.path, x) - expected).abs().max() <= TOL
    assert json.loads((result.path / "preprocessor_config.json").read_text())["max_length"] == 512
    assert "adapted from the source's 1024-frame grid to 512 frames" in (result.path / "README.md").read_text()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_dtype(tmp_path, dtype):
    sd = original_state_dict(128, 1, 5, (12, 12), seed=10)
    src = tmp_path / "half.pth"
    torch.save(sd, src)
    result = convert_original_checkpoint(src, tmp_path / "out", fstride=10, tstride=10, input_tdim=128, dtype=dtype)
    torch_dtype = getattr(torch, dtype)
    with safe_open(result.path / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert {t.dtype for t in tensors.values()} == {torch_dtype}
    assert torch.equal(tensors["audio_spectrogram_transformer.embeddings.cls_token"],
                       sd["module.v.cls_token"].to(torch_dtype))
    query = tensors["audio_spectrogram_transformer.encoder.layer.0.attention.attention.query.weight"]
    assert torch.equal(query, sd["module.v.blocks.0.attn.qkv.weight"][:128].to(torch_dtype))
    assert json.loads((result.path / "config.json").read_text())["dtype"] == dtype
    # verification compares against the source rounded to the same dtype, computed in float32/float64
    assert result.max_abs_diff <= TOL
    rounded = {k: v.to(torch_dtype).float() for k, v in sd.items()}
    x = random_input(2, 128)
    expected = reference_logits(rounded, x, fstride=10, tstride=10, heads=2)
    assert (our_logits(result.path, x) - expected).abs().max() <= TOL


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_dtype_with_a_longer_max_length(tmp_path, fixtures_dir, dtype):
    """A bilinear resize (max_length beyond the source's 128 frames) then rounding, as the saved model holds the
    embeddings: verification compares with the same (rounding first was an ulp off and refused bfloat16)."""
    result = convert_original_checkpoint(fixtures_dir / f"{FIXTURE}.pth", tmp_path / "out", dtype=dtype,
                                         max_length=200)
    assert result.config.max_length == 200 and result.config.patch_grid() == (12, 19)  # source grid (12, 12)
    assert result.max_abs_diff <= TOL / 4
    with safe_open(result.path / "model.safetensors", "pt") as f:
        pos = f.get_tensor("audio_spectrogram_transformer.embeddings.position_embeddings")
    assert pos.dtype == getattr(torch, dtype) and pos.shape[1] == 2 + 12 * 19


# --------------------------------------------------------------------------------------------------------------
# Geometry inference
# --------------------------------------------------------------------------------------------------------------


def test_released_names():
    assert parse_released_name("audioset_10_10_0.4593.pth") == {"dataset": "audioset", "fstride": 10,
                                                                "tstride": 10, "score": 0.4593}
    assert parse_released_name("/x/speechcommands_10_10_0.9812.pth")["score"] == 0.9812
    assert parse_released_name("audioset_12_12_0.4467.pth")["fstride"] == 12
    assert parse_released_name("my_model.pth") is None


def test_solve_geometry():
    # AudioSet 10/10 and 12/12, 1024 frames: unique once the usual length is preferred
    g = solve_geometry(12 * 101, preferred_tdim=1024)
    assert (g.fstride, g.tstride, g.grid) == (10, 10, (12, 101)) and g.min_frames <= 1024 <= g.max_frames
    g = solve_geometry(10 * 85, preferred_tdim=1024)
    assert (g.fstride, g.tstride) == (12, 12)
    g = solve_geometry(12 * 29, fstride=10, input_tdim=300)  # tstride solved from the length
    assert g.tstride == 10
    with pytest.raises(ValueError, match="fstride=10 tstride=10.*fstride=13 tstride=13"):
        solve_geometry(144)
    with pytest.raises(ValueError, match="no patch geometry"):
        solve_geometry(12 * 101, fstride=10, tstride=10, input_tdim=500)


def test_ambiguous_strides_refused_with_candidates(tmp_path):
    sd = original_state_dict(64, 1, 10, (12, 12), seed=11)  # 144 tokens, 10 labels: no dataset to go by
    src = tmp_path / "custom.pth"
    torch.save(sd, src)
    with pytest.raises(ValueError, match=r"several geometries.*fstride=10 tstride=10 \(12x12 patches, 126-135 "
                                         r"frames\).*fstride=16 tstride=16.*--fstride"):
        convert_original_checkpoint(src, tmp_path / "out")
    assert_nothing_left(tmp_path, keep={"custom.pth"})
    renamed = tmp_path / "audioset_12_12_0.4467.pth"  # a released name whose strides do not fit the tokens
    torch.save(sd, renamed)
    with pytest.raises(ValueError, match="no patch geometry.*come from the file name audioset_12_12_0.4467.pth"):
        convert_original_checkpoint(renamed, tmp_path / "out")
    renamed.unlink()
    # an input length settles it
    result = convert_original_checkpoint(src, tmp_path / "out", input_tdim=128)
    assert (result.config.frequency_stride, result.config.time_stride) == (10, 10)


# --------------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------------


def test_label_tables_match_the_shared_ones(fixtures_dir, tmp_path):
    from ast_hf.labels import DATASETS, dataset_for_num_labels, load_label_table

    shared = fixtures_dir.parent.parent / "labels"
    expected_stats = {"audioset": (527, -4.2677393, 4.5689974, 1024), "esc50": (50, -6.6268077, 5.358466, 512),
                      "speechcommands": (35, -6.845978, 5.5654526, 128)}
    for name, (count, mean, std, frames) in expected_stats.items():
        info = DATASETS[name]
        assert (info.num_labels, info.mean, info.std, info.max_length) == (count, mean, std, frames)
        assert dataset_for_num_labels(count) is info
        with open(shared / info.label_file, newline="") as f:
            rows = {int(r["index"]): r["display_name"] for r in csv.DictReader(f)}
        assert load_label_table(name) == rows and len(rows) == count
    assert DATASETS["audioset"].problem_type == "multi_label_classification"
    assert dataset_for_num_labels(10) is None
    for text, message in [("index,name\n0,a\n2,b\n", "without gaps"), ("id,name\n0,a\n", "`index` column"),
                          ("index,name\nx,a\n", "not an integer"), ("index,name\n0,a\n0,b\n", "appears twice")]:
        (tmp_path / "t.csv").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_label_table(tmp_path / "t.csv")


def test_label_options(tmp_path):
    sd = original_state_dict(64, 1, 3, (12, 12), seed=12)
    src = tmp_path / "three.pth"
    torch.save(sd, src)
    table = tmp_path / "mine.csv"
    table.write_text('index,mid,display_name\n0,/x/0,"dog, barking"\n1,/x/1,cat\n2,/x/2,bird\n')
    geo = dict(fstride=10, tstride=10, input_tdim=128)
    cfg = convert_original_checkpoint(src, tmp_path / "a", labels=table, **geo).config
    assert cfg.id2label == {0: "dog, barking", 1: "cat", 2: "bird"} and cfg.label2id["cat"] == 1
    cfg = convert_original_checkpoint(src, tmp_path / "b", labels="none", **geo).config
    assert cfg.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    with pytest.raises(ValueError, match="ESC-50 has 50 labels but the checkpoint's head has 3"):
        convert_original_checkpoint(src, tmp_path / "c", labels="esc50", **geo)
    bad = tmp_path / "two.csv"
    bad.write_text("index,mid,display_name\n0,/x/0,a\n1,/x/1,b\n")
    with pytest.raises(ValueError, match="has 2 labels"):
        convert_original_checkpoint(src, tmp_path / "d", labels=bad, **geo)
    with pytest.raises(ValueError, match="'imagenet' is neither a CSV file nor one of auto, none, audioset"):
        convert_original_checkpoint(src, tmp_path / "e", labels="imagenet", **geo)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


# --------------------------------------------------------------------------------------------------------------
# Bad input: refused with one clear line, nothing written
# --------------------------------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, container):
    marker = tmp_path / "pwned"
    evil = {"module.v.cls_token": torch.zeros(1, 1, 64), "payload": _Payload(marker)}
    src = tmp_path / "evil.pth"
    if container == "torch-zip":
        torch.save(evil, src)
    else:
        src.write_bytes(pickle.dumps(evil))
    # the payload is live: an unsafe load runs it
    torch.load(src, weights_only=False) if container == "torch-zip" else pickle.loads(src.read_bytes())
    assert marker.exists()
    marker.unlink()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"evil\.pth.*nothing in it was executed") as error:
        convert_original_checkpoint(src, out)
    if container == "torch-zip":
        assert "refused to load evil.pth" in str(error.value) and "it would call exec" in str(error.value)
    assert not marker.exists() and not out.exists()
    assert main(["convert", str(src), str(out)]) == 1
    assert not marker.exists()
    assert_nothing_left(tmp_path, keep={"evil.pth"})


def test_truncated_and_non_checkpoint_files(tmp_path):
    sd = original_state_dict(64, 1, 5, (12, 12), seed=13)
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    data = good.read_bytes()
    cases = {"truncated.pth": data[: len(data) // 2], "text.pth": b"not a checkpoint\n", "empty.pth": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name} is not a readable PyTorch checkpoint"):
            convert_original_checkpoint(tmp_path / name, tmp_path / "out")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="holds a Tensor, not a state dict"):
        convert_original_checkpoint(tmp_path / "tensor.pth", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_original_checkpoint(tmp_path / "missing.pth", tmp_path / "out")
    assert_nothing_left(tmp_path, keep={"good.pth", "tensor.pth", *cases})


def test_missing_unexpected_and_misshapen_keys(tmp_path):
    sd = original_state_dict(64, 2, 5, (12, 12), seed=14)
    geo = dict(fstride=10, tstride=10, input_tdim=128)
    variants = {
        "missing": ({k: v for k, v in sd.items() if k != "module.v.blocks.1.attn.proj.weight"},
                    r"missing v\.blocks\.1\.attn\.proj\.weight"),
        "unexpected": ({**sd, "module.v.blocks.0.attn.extra": torch.zeros(3)}, r"unexpected v\.blocks\.0\.attn\.extra"),
        "shape": ({**sd, "module.v.blocks.1.mlp.fc2.weight": torch.zeros(64, 100)},
                  r"shapes fit no AST configuration.*v\.blocks\.1\.mlp\.fc2\.weight \(64, 100\)"),
        "not_ast": ({"encoder.weight": torch.zeros(3)}, "not an AST or SSAST checkpoint.*encoder.weight"),
        "width": (original_state_dict(96, 1, 5, (12, 12)), "not a multiple of 64"),
    }
    for name, (state, message) in variants.items():
        torch.save(state, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match=message):
            convert_original_checkpoint(tmp_path / f"{name}.pth", tmp_path / "out", **geo)
    assert_nothing_left(tmp_path, keep={f"{n}.pth" for n in variants})


def test_existing_output_needs_force(tmp_path):
    sd = original_state_dict(64, 1, 5, (12, 12), seed=15)
    src = tmp_path / "m.pth"
    torch.save(sd, src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    geo = dict(fstride=10, tstride=10, input_tdim=128)
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        convert_original_checkpoint(src, out, **geo)
    assert (out / "mine.txt").read_text() == "keep me"
    convert_original_checkpoint(src, out, force=True, **geo)
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
    assert_nothing_left(tmp_path, keep={"m.pth", "out"})


def test_force_refuses_an_output_folder_that_holds_the_source(tmp_path):
    """--force replaces the whole output folder: converting into the source's own folder would delete the source."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    src = out / "sub" / "m.pth"
    torch.save(original_state_dict(64, 1, 5, (12, 12), seed=16), src)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="source .* is inside the output folder"):
        convert_original_checkpoint(src, out, force=True, fstride=10, tstride=10, input_tdim=128)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert_nothing_left(tmp_path, keep={"out"})


def test_max_length_as_a_whole_float_converts_and_a_fractional_one_is_refused(tmp_path):
    """`max_length=5.12 * 100` is 512 frames (it crashed inside torch's interpolate with a TypeError)."""
    src = tmp_path / "m.pth"
    torch.save(original_state_dict(64, 1, 5, (12, 12), seed=17), src)
    geo = dict(fstride=10, tstride=10, input_tdim=128)
    result = convert_original_checkpoint(src, tmp_path / "out", max_length=5.12 * 100, **geo)
    assert json.loads((result.path / "config.json").read_text())["max_length"] == 512
    assert json.loads((result.path / "preprocessor_config.json").read_text())["max_length"] == 512
    assert result.max_abs_diff <= TOL
    with pytest.raises(ValueError, match="max_length must be a positive whole number of frames, got 100.5"):
        convert_original_checkpoint(src, tmp_path / "out2", max_length=100.5, **geo)
    assert_nothing_left(tmp_path, keep={"m.pth", "out"})


def test_failed_verification_leaves_nothing(tmp_path):
    """A checkpoint with NaN weights converts to NaN logits: refused, no folder, no parents created for it."""
    sd = original_state_dict(64, 1, 5, (12, 12), seed=16)
    sd["module.v.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    src = tmp_path / "nan.pth"
    torch.save(sd, src)
    with pytest.raises(ConversionError, match="verification failed"):
        convert_original_checkpoint(src, tmp_path / "new" / "deeper" / "out", fstride=10, tstride=10,
                                    input_tdim=128)
    assert_nothing_left(tmp_path, keep={"nan.pth"})


def test_push_failure_keeps_the_verified_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sd = original_state_dict(64, 1, 5, (12, 12), seed=17)
    src = tmp_path / "m.pth"
    torch.save(sd, src)
    with pytest.raises(OSError, match="written to .*out, but pushing it to someone/ast failed"):
        convert_original_checkpoint(src, tmp_path / "out", fstride=10, tstride=10, input_tdim=128,
                                    push_to_hub="someone/ast")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert 'model="someone/ast"' in (tmp_path / "out" / "README.md").read_text()


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def test_cli(tmp_path, capsys, fixtures_dir):
    src = fixtures_dir / f"{FIXTURE}.pth"
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--fstride", "10", "--tstride", "10", "--input-tdim", "128",
                 "--labels", "speechcommands", "--dtype", "float16"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max |logit difference|" in printed
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"

    assert main(["convert", str(src), str(out)]) == 1  # exists, no --force
    err = capsys.readouterr().err.strip()
    assert err.startswith("ast-hf convert: error:") and "--force" in err and "\n" not in err
    assert main(["convert", str(src), str(tmp_path / "x"), "--labels", "audioset"]) == 1
    err = capsys.readouterr().err.strip()
    assert "AudioSet has 527 labels" in err and "\n" not in err
    assert main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "y")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(src), str(tmp_path / "z"), "--dtype", "float8"])
    assert exit_info.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
