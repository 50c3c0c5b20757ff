"""examples/finetune.py starting from the rest of the AST family: an SSAST self-supervised backbone with the
`ssast-*` recipes (loaded at the recipe's strides and pooling) and ImageNet DeiT weights (`--imagenet`)."""

from __future__ import annotations

import pytest
import torch

from ast_hf import ASTForAudioClassification, convert_original_checkpoint
from ast_hf.training.recipes import get_recipe
from helpers import example_script, word_folders
from test_imagenet_init import timm_deit
from test_ssast import pretraining_checkpoint


@pytest.fixture(scope="module")
def finetune():
    return example_script("finetune")


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    """An audiofolder with two of the Speech Commands labels (noise bursts vs tones), train and test."""
    return word_folders(tmp_path_factory.mktemp("words"))


def test_ssast_recipes_name_the_authors_settings():
    sc, esc = get_recipe("ssast-speechcommands"), get_recipe("SSAST_ESC50")
    assert (sc.frequency_stride, sc.time_stride, sc.pooling, sc.dataset_name, sc.warmup_steps) == (
        128, 1, "mean", "speechcommands", 1000)
    assert (esc.frequency_stride, esc.time_stride, esc.pooling, esc.dataset_name, esc.lr_decay_start) == (
        10, 10, "mean", "esc50", 6)
    assert get_recipe("esc50").dataset_name == "esc50" and get_recipe("esc50").pooling is None


def test_ssast_frame_backbone_fine_tunes_with_its_recipe(finetune, words, tmp_path):
    sd, _ = pretraining_checkpoint(64, 1, (128, 200), patch=(128, 2), seed=5)
    torch.save(sd, tmp_path / "ssl.pth")
    convert_original_checkpoint(tmp_path / "ssl.pth", tmp_path / "backbone")
    out = tmp_path / "run"
    assert finetune.main(["--recipe", "ssast-speechcommands", "--data", str(words), "--model",
                          str(tmp_path / "backbone"), "--output-dir", str(out), "--epochs", "1", "--batch-size", "4",
                          "--max-length", "48", "--save-strategy", "no", "--cpu"]) == 0
    final = ASTForAudioClassification.from_pretrained(out / "final")
    config = final.config
    assert (config.patch_shape, config.frequency_stride, config.time_stride) == ((128, 2), 128, 1)
    assert (config.pooling, config.max_length, config.patch_grid()) == ("mean", 48, (1, 47))
    assert sorted(config.id2label.values()) == ["no", "yes"]


def test_imagenet_start_fine_tunes(finetune, words, tmp_path):
    torch.save({"model": timm_deit(64, 1, 14)}, tmp_path / "deit.pth")
    out = tmp_path / "run"
    assert finetune.main(["--recipe", "speechcommands", "--data", str(words), "--imagenet", str(tmp_path / "deit.pth"),
                          "--output-dir", str(out), "--epochs", "1", "--batch-size", "4", "--max-length", "48",
                          "--save-strategy", "no", "--cpu"]) == 0
    config = ASTForAudioClassification.from_pretrained(out / "final").config
    assert (config.layer_norm_eps, config.frequency_stride, config.time_stride, config.max_length) == (1e-6, 10, 10, 48)
