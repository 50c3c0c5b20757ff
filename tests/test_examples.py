"""The example scripts (examples/): what their docstrings and examples/README.md say they do, offline. The web
app's Space script is tested in test_app.py, the recipes' training in test_training.py and test_family_recipes.py."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from ast_hf import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification
from helpers import RATE, example_script, tone_or_noise, word_folders


@pytest.fixture(scope="module")
def finetune():
    return example_script("finetune")


def _clip(rng, label: str) -> np.ndarray:
    return tone_or_noise(rng, label in ("yes", "dog"))


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    """An audiofolder with train and test splits (no folds)."""
    return word_folders(tmp_path_factory.mktemp("words"))


@pytest.fixture(scope="module")
def esc(tmp_path_factory):
    """An ESC-50-style folder: one split, metadata.csv with folds 1, 2, 3."""
    root = tmp_path_factory.mktemp("esc")
    (root / "train").mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        label = ["dog", "rain"][i % 2]
        sf.write(root / "train" / f"{i}.wav", _clip(rng, label), RATE)
        rows.append({"file_name": f"{i}.wav", "label": label, "fold": 1 + i % 3})
    with open(root / "train" / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "label", "fold"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64)))
    return path


QUICK = ["--epochs", "1", "--batch-size", "4", "--max-length", "48", "--save-strategy", "no", "--cpu"]


def test_finetune_starts_from_a_local_model_at_its_own_mel_bins(finetune, words, tmp_path):
    """`--model DIR` with a model built here at 64 mel bins: the features are made at the model's 64 bins (the
    script made 128 and the trainer refused the pair)."""
    model_dir = tmp_path / "mel64"
    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       num_mel_bins=64, max_length=48, num_labels=2)
    ASTForAudioClassification(config).save_pretrained(model_dir)
    ASTFeatureExtractor(num_mel_bins=64, max_length=48).save_pretrained(model_dir)
    out = tmp_path / "run"
    assert finetune.main(["--recipe", "speechcommands", "--data", str(words), "--model", str(model_dir),
                          "--output-dir", str(out), *QUICK]) == 0
    final = ASTForAudioClassification.from_pretrained(out / "final")
    assert final.config.num_mel_bins == 64 and sorted(final.config.id2label.values()) == ["no", "yes"]
    assert json.loads((out / "final" / "preprocessor_config.json").read_text())["num_mel_bins"] == 64


def test_finetune_refuses_a_fold_it_would_not_find_or_not_use(finetune, words, esc, tmp_path):
    """`--fold` picks cross-validation folds: a fold the data lacks is named with the folds it has (it failed as
    "split 'eval' is empty"), and a --fold where there is no cross-validation is refused (it was ignored: the
    run trained on all of train and scored on test)."""
    config = _tiny_config(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"no fold 0 in .*: its folds are 1, 2, 3"):
        finetune.main(["--recipe", "esc50", "--data", str(esc), "--config", str(config), "--fold", "0",
                       "--output-dir", str(out), *QUICK])
    with pytest.raises(ValueError, match="--fold applies to cross-validation.*the speechcommands recipe has no folds"):
        finetune.main(["--recipe", "speechcommands", "--data", str(words), "--config", str(config), "--fold", "1",
                       "--output-dir", str(out), *QUICK])
    with pytest.raises(ValueError, match="--fold applies to cross-validation.*has no 'fold' column"):
        finetune.main(["--recipe", "esc50", "--data", str(words), "--config", str(config), "--fold", "1",
                       "--output-dir", str(out), *QUICK])
    assert not out.exists()  # refused before training
    assert finetune.main(["--recipe", "esc50", "--data", str(esc), "--config", str(config), "--fold", "2",
                          "--output-dir", str(out), *QUICK]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cross_validation.json", "fold2"]
    assert list(json.loads((out / "cross_validation.json").read_text())["folds"]) == ["fold2"]


def test_finetune_refuses_options_it_would_ignore(finetune, capsys):
    """Two starting points (one was silently dropped) and a zero override (read as 'the recipe's value') are
    refused by name."""
    base = ["--recipe", "speechcommands", "--output-dir", "out"]
    for extra, said in ((["--model", "a", "--config", "b.json"], "--config: not allowed with argument --model"),
                        (["--model", "a", "--imagenet", "d.pth"], "not allowed with argument --model"),
                        (["--lr", "0"], "--lr must be positive, got 0.0"),
                        (["--max-steps", "0"], "--max-steps must be positive, got 0"),
                        (["--epochs", "-1"], "--epochs must be positive, got -1.0")):
        with pytest.raises(SystemExit) as stopped:
            finetune.parse_args(base + extra)
        assert stopped.value.code == 2
        assert said in capsys.readouterr().err
    assert finetune.parse_args(base + ["--mixup", "0", "--freqm", "0"]).mixup == 0.0  # 0 means none, not unset
