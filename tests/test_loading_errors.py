"""Loading a model folder that is damaged or does not fit: one line saying what is wrong and what to do (exit code 1
from the CLI, ValueError from the library), and no stray reports: a classifier folder loaded as a backbone
(`ast-hf embed`) and a pipeline built after `ast_hf.register()` print nothing about loading."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, ASTModel
from ast_hf.cli import main
from helpers import tiny_config


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved tiny model, a 1 s recording, and three broken copies of the model folder."""
    root = tmp_path_factory.mktemp("loading")
    torch.manual_seed(0)
    ASTForAudioClassification(tiny_config(num_labels=3)).save_pretrained(root / "model")
    ASTFeatureExtractor(max_length=128).save_pretrained(root / "model")
    sf.write(root / "rec.wav", np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    for name in ("truncated", "no_config", "wide"):
        shutil.copytree(root / "model", root / name)
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    (root / "no_config" / "config.json").unlink()
    config = json.loads((root / "wide" / "config.json").read_text())
    config.update(hidden_size=128, intermediate_size=256)  # a config.json that belongs to other weights
    (root / "wide" / "config.json").write_text(json.dumps(config))
    return root


def cli(*argv) -> subprocess.CompletedProcess:
    """`ast-hf ARGV` in a fresh process: transformers' log handlers write to the real stderr, which capsys misses."""
    return subprocess.run([sys.executable, "-m", "ast_hf.cli", *map(str, argv)], capture_output=True, text=True)


def messages(stream: str) -> list[str]:
    """Lines of a captured stream without the progress bars."""
    return [line for line in stream.splitlines() if line.strip() and "Loading weights" not in line]


@pytest.mark.parametrize("name, message", [
    ("truncated", "the file is damaged or incomplete; download or save the model again"),
    ("no_config", "has no config.json, so the model's shape is unknown"),
    ("wide", "weights of another shape (audio_spectrogram_transformer.embeddings.cls_token 1x1x64 (config.json: "
             "1x1x128)"),
])
def test_broken_model_folder_gives_one_line_and_exit_code_1(folders, capsys, name, message):
    code = main(["predict", str(folders / "rec.wav"), "--model", str(folders / name), "--no-progress"])
    err = messages(capsys.readouterr().err)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("ast-hf predict: error: ") and str(folders / name) in err[0] and message in err[0]


@pytest.mark.parametrize("name", ["truncated", "no_config", "wide"])
def test_broken_model_folder_raises_value_error_naming_it(folders, name):
    for model_class in (ASTForAudioClassification, ASTModel):
        with pytest.raises(ValueError, match=str(folders / name)):
            model_class.from_pretrained(folders / name)


def test_wrong_width_prints_no_load_report(folders):
    """transformers prints a table of every mismatched weight before raising; the one line replaces it."""
    run = cli("predict", folders / "rec.wav", "--model", folders / "wide", "--no-progress")
    assert run.returncode == 1 and "LOAD REPORT" not in run.stderr + run.stdout
    assert messages(run.stderr) == [line for line in messages(run.stderr) if line.startswith("ast-hf predict:")]


def test_embed_loads_the_backbone_of_a_classifier_without_a_report(folders, tmp_path):
    run = cli("embed", folders / "rec.wav", "--model", folders / "model", "--output", tmp_path / "e.npz")
    assert run.returncode == 0, run.stderr
    assert "LOAD REPORT" not in run.stderr + run.stdout and "UNEXPECTED" not in run.stderr + run.stdout
    assert (tmp_path / "e.npz").is_file()


def test_head_checks_still_report_what_is_not_loaded(folders):
    """The classifier keys are ignored only when loading into the backbone: a head left behind in a fresh
    `num_labels` is still reported by the loading info."""
    model, info = ASTForAudioClassification.from_pretrained(folders / "model", num_labels=7, output_loading_info=True)
    assert model.config.num_labels == 7 and {k for k, *_ in info["mismatched_keys"]} == {"classifier.dense.weight",
                                                                                        "classifier.dense.bias"}


def test_pipeline_after_register_prints_nothing_about_checkpoints(folders):
    """transformers' own AST module, imported by `pipeline()`, builds its docstrings from the registered config's
    docstring; without a checkpoint link there it printed an `[ERROR] No checkpoint found ...` line."""
    code = ("import ast_hf\nfrom transformers import pipeline\nast_hf.register()\n"
            f"clf = pipeline('audio-classification', model={str(folders / 'model')!r})\n"
            "print(type(clf.model).__module__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert messages(run.stdout) == ["ast_hf.modeling_ast"] and "[ERROR]" not in run.stderr


def test_a_bare_name_that_is_no_folder_here_is_named(folders, capsys, monkeypatch):
    """`--model missingdir` (no such folder) was tried as a Hub id and reported only that huggingface.co could not
    be reached; the message now names the source and says it is neither a folder here nor a reachable Hub id."""
    monkeypatch.chdir(folders)
    code = main(["predict", str(folders / "rec.wav"), "--model", "missingdir", "--no-progress"])
    err = messages(capsys.readouterr().err)
    assert code == 1 and len(err) == 1 and err[0].startswith("ast-hf predict: error: "), err
    assert "missingdir: no model folder of that name here" in err[0]


def test_a_home_relative_folder_loads(folders, monkeypatch):
    """`~/...` is treated as a local path, but was never expanded: a folder that exists was reported missing."""
    from ast_hf.model_loading import load_for_inference

    monkeypatch.setenv("HOME", str(folders))
    model, extractor = load_for_inference("~/model", device="cpu")
    assert isinstance(model, ASTForAudioClassification) and extractor.max_length == 128
    with pytest.raises(FileNotFoundError, match="no model folder at"):
        load_for_inference("~/missing", device="cpu")
