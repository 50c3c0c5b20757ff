"""Weight averaging (identical models, two known models, by epoch inside Trainer) and prediction ensembles."""

from __future__ import annotations

import json

import pytest
import torch

from ast_hf import ASTForAudioClassification
from ast_hf.ensemble import ASTEnsemble
from ast_hf.training.averaging import (
    WeightAveragingCallback,
    average_checkpoints,
    average_state_dicts,
    checkpoints_for_epochs,
    load_weights,
)
from helpers import tiny_config


def _model(seed: int, **overrides) -> ASTForAudioClassification:
    torch.manual_seed(seed)
    return ASTForAudioClassification(tiny_config(**overrides)).eval()


def test_average_of_identical_models_is_that_model(tmp_path):
    model = _model(0)
    for i in range(3):
        model.save_pretrained(tmp_path / f"m{i}")
    averaged = average_checkpoints([tmp_path / f"m{i}" for i in range(3)], out_dir=tmp_path / "avg")
    for key, value in model.state_dict().items():
        assert torch.equal(averaged.state_dict()[key], value), key
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(averaged(x).logits, model(x).logits, rtol=0, atol=0)
    reloaded = ASTForAudioClassification.from_pretrained(tmp_path / "avg")
    assert torch.equal(reloaded.classifier.dense.weight, model.classifier.dense.weight)


def test_average_of_two_known_models_is_their_mean(tmp_path):
    a, b = _model(1), _model(2)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    averaged = average_checkpoints([tmp_path / "a", tmp_path / "b"])
    for key, value in averaged.state_dict().items():
        expected = (a.state_dict()[key] + b.state_dict()[key]) / 2
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
    # And the averaged model computes what a model built from the mean weights computes.
    manual = _model(3)
    manual.load_state_dict({k: (a.state_dict()[k] + b.state_dict()[k]) / 2 for k in a.state_dict()})
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(averaged(x).logits, manual(x).logits, rtol=1e-6, atol=1e-6)


def test_mismatched_checkpoints_are_refused(tmp_path):
    a, b = _model(1), _model(2, num_labels=7)
    with pytest.raises(ValueError, match="classifier.dense.weight has shape"):
        average_state_dicts([a.state_dict(), b.state_dict()])
    with pytest.raises(ValueError, match="at least one"):
        average_state_dicts([])
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_weights(tmp_path / "nope")


def test_average_checkpoints_never_replaces_a_folder_unasked_nor_its_own_checkpoints(tmp_path):
    run = tmp_path / "run"
    for step, seed in ((10, 1), (20, 2)):
        _model(seed).save_pretrained(run / f"checkpoint-{step}")
    checkpoints = [run / "checkpoint-10", run / "checkpoint-20"]
    for out_dir in (run, run / "checkpoint-20", tmp_path / "run" / ".." / "run"):  # holds them, is one of them
        for force in (False, True):
            with pytest.raises(ValueError, match=r"out_dir .* is or holds the checkpoint .*checkpoint-\d+ being av"):
                average_checkpoints(checkpoints, out_dir=out_dir, force=force)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-10", "checkpoint-20"]
    existing = tmp_path / "kept"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"kept already exists; pass --force"):
        average_checkpoints(checkpoints, out_dir=existing)
    assert (existing / "notes.txt").read_text() == "mine"
    averaged = average_checkpoints(checkpoints, out_dir=existing, force=True)
    assert not (existing / "notes.txt").exists()
    reloaded = ASTForAudioClassification.from_pretrained(existing)
    assert torch.equal(reloaded.classifier.dense.weight, averaged.classifier.dense.weight)


def _trainer_run(out_dir, epochs, callbacks, resume=None):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    data = [{"input_values": torch.randn(128, 128), "labels": i % 5} for i in range(8)]
    model = ASTForAudioClassification(tiny_config())
    args = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=4, num_train_epochs=epochs,
                             learning_rate=1e-3, save_strategy="epoch", report_to=[], use_cpu=True,
                             logging_strategy="no", disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer.model


def test_callback_equals_averaging_the_epoch_checkpoints(tmp_path):
    model = _trainer_run(tmp_path, 3, [WeightAveragingCallback(2, 3)])
    chosen = checkpoints_for_epochs(tmp_path, 2, 3)
    assert [json.loads((c / "trainer_state.json").read_text())["epoch"] for c in chosen] == [2.0, 3.0]
    expected = average_checkpoints(chosen)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"epoch\(s\) \[4\]"):
        checkpoints_for_epochs(tmp_path, 3, 4)


def test_callback_survives_resume(tmp_path):
    import shutil

    full = _trainer_run(tmp_path / "full", 3, [WeightAveragingCallback(1, 3)])
    _trainer_run(tmp_path / "cut", 3, [WeightAveragingCallback(1, 3)])
    shutil.rmtree(tmp_path / "cut" / "checkpoint-6")  # as if the run had died during epoch 3
    resumed = _trainer_run(tmp_path / "cut", 3, [WeightAveragingCallback(1, 3)], resume=True)
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_ensemble_averages_probabilities(tmp_path):
    a, b = _model(4), _model(5, frequency_stride=16, time_stride=16)  # members may differ in geometry
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    ensemble = ASTEnsemble.from_pretrained([tmp_path / "a", tmp_path / "b"])
    x = torch.randn(3, 128, 128)
    with torch.no_grad():
        out = ensemble(x)
        expected = (a(x).logits.softmax(-1) + b(x).logits.softmax(-1)) / 2
    torch.testing.assert_close(out.probabilities, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.logits.softmax(-1), expected, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # one member: its own predictions
        torch.testing.assert_close(ASTEnsemble([a])(x).logits.softmax(-1), a(x).logits.softmax(-1))


def test_multilabel_ensemble_uses_sigmoid_and_checks_labels():
    a = _model(6, problem_type="multi_label_classification")
    b = _model(7, problem_type="multi_label_classification")
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        out = ASTEnsemble([a, b])(x)
        expected = (torch.sigmoid(a(x).logits) + torch.sigmoid(b(x).logits)) / 2
    torch.testing.assert_close(out.probabilities, expected)
    torch.testing.assert_close(torch.sigmoid(out.logits), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="members must share labels"):
        ASTEnsemble([a, _model(8, num_labels=3, problem_type="multi_label_classification")])
    with pytest.raises(ValueError, match="list of model folders"):
        ASTEnsemble.from_pretrained("one/dir")


def test_loading_an_ensemble_for_inference_leaves_trainer_out(tmp_path):
    """Inference needs no training code: `Trainer` (and what it imports) stays unimported in a fresh process."""
    import subprocess
    import sys

    for seed, name in ((0, "a"), (1, "b")):
        _model(seed).save_pretrained(tmp_path / name)
    code = ("import sys\nfrom ast_hf.model_loading import load_for_inference\n"
            f"model, _ = load_for_inference([{str(tmp_path / 'a')!r}, {str(tmp_path / 'b')!r}], 'cpu')\n"
            "print(type(model).__name__, 'transformers.trainer' in sys.modules, 'ast_hf.training' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["ASTEnsemble", "False", "False"]


def test_ensemble_names_stay_importable_from_the_package_and_training():
    import ast_hf
    import ast_hf.training

    assert ast_hf.ASTEnsemble is ast_hf.training.ASTEnsemble is ASTEnsemble


def test_callback_leaves_out_an_epoch_cut_short_by_max_steps(tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    data = [{"input_values": torch.randn(128, 128), "labels": i % 5} for i in range(20)]  # 5 steps per epoch
    model = ASTForAudioClassification(tiny_config())
    callback = WeightAveragingCallback(1)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=8,
                             learning_rate=1e-3, save_strategy="steps", save_steps=5, report_to=[], use_cpu=True,
                             logging_strategy="no", disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    # training stopped at epoch 1.6: the weights at step 8 are not the end of epoch 2 and stay out of the average
    assert callback.epochs == [1]
    expected = load_weights(tmp_path / "checkpoint-5")  # saved at the end of epoch 1
    for key, value in expected.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-7)
