"""The offline demo in quick mode (tiny data, one epoch) and the `norm-stats` command, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from ast_hf.cli import main


def test_demo_quick_writes_model_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy on 20 clips of unheard voices" in printed and "   acc" in printed  # the confusion table
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "num_test_clips", "num_classes", "seconds"):
        assert key in metrics
    assert metrics["num_classes"] == 10 and metrics["num_test_clips"] == 20
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["pipeline_accuracy"] == pytest.approx(metrics["accuracy"])
    split = metrics["split"]
    assert not set(split["test_variants"]) & set(split["train_variants"])  # test voices never heard in training
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "preprocessor_config.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["data", "metrics.json", "model"]  # no leftovers
    assert not list(tmp_path.glob(".demo.*"))  # no staging folder left behind
    # An existing, non-empty output folder is not overwritten without --force.
    assert main(["demo", "--out", str(out), "--quick"]) == 1
    assert "pass --force" in capsys.readouterr().err


def test_demo_training_options_are_applied_and_recorded(tmp_path, capsys):
    """The speed options reach the trainer (patchout in the training arguments, recorded in metrics.json) and the
    token-reduction table is measured on the test set, its full-model row the demo's own accuracy."""
    from ast_hf.onednn import BF16_UNITS

    out = tmp_path / "demo"
    flags = ["--patchout-time", "3", "--patchout-freq", "1", "--patchout-random", "0.25"] + ["--bf16"] * BF16_UNITS
    assert main(["demo", "--out", str(out), "--quick", *flags]) == 0
    printed = capsys.readouterr().out
    assert "token reduction, keep 50% of patches" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    settings = metrics["settings"]
    assert (settings["patchout_time"], settings["patchout_freq"], settings["patchout_random"]) == (3, 1, 0.25)
    assert settings["bf16"] == BF16_UNITS
    table = metrics["token_reduction"]
    assert [row["keep"] for row in table] == [1.0, 0.75, 0.5, 0.25]
    assert table[0]["accuracy"] == pytest.approx(metrics["accuracy"])


def test_demo_refuses_training_options_for_the_events_task(tmp_path, capsys):
    assert main(["demo", "--task", "events", "--out", str(tmp_path / "d"), "--quick", "--patchout-time", "2"]) == 1
    assert "options of --task classify" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_norm_stats_command(tmp_path):
    from ast_hf import ASTFeatureExtractor
    from ast_hf.training import compute_normalization_stats, load_audio_dataset

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "data" / "train" / label).mkdir(parents=True)
        for i in range(3):
            sf.write(tmp_path / "data" / "train" / label / f"{i}.wav",
                     (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    assert main(["norm-stats", str(tmp_path / "data"), "--out", str(tmp_path / "fe"), "--max-length", "64"]) == 0
    saved = ASTFeatureExtractor.from_pretrained(tmp_path / "fe")
    fe = ASTFeatureExtractor(max_length=64)
    mean, std = compute_normalization_stats(load_audio_dataset(tmp_path / "data", split="train"), fe)
    assert (saved.mean, saved.std, saved.max_length) == pytest.approx((mean, std, 64))


def test_events_demo_quick_writes_metrics_plot_events_and_model(tmp_path, capsys):
    from ast_hf import ASTForAudioClassification
    from ast_hf.event_tsv import read_event_tsv

    out = tmp_path / "events"
    assert main(["demo", "--task", "events", "--out", str(out), "--quick"]) == 0
    assert "column_scores: event F1" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["event_f1"] <= 1.0 and 0.0 <= metrics["segment_f1"] <= 1.0 and metrics["seconds"] > 0
    for method in ("frame_head", "column_scores"):
        assert {"event_f1", "segment_f1", "event_f1_macro", "segment_f1_macro"} <= set(metrics[method])
        # thresholds tuned on the validation scenes (training voices), one per label, from the quick grid
        assert set(metrics[method]["on_thresholds"]) == set(metrics["labels"])
        assert set(metrics[method]["on_thresholds"].values()) <= {0.3, 0.5}
    assert metrics["event_f1"] == metrics["frame_head"]["event_f1"]
    assert metrics["metric_settings"] == {"t_collar": 0.2, "percentage_of_length": 0.2, "segment_seconds": 1.0,
                                          "library": "sed_eval"}
    assert sorted(p.name for p in out.iterdir()) == ["data", "metrics.json", "model", "scene.png", "test_events.tsv"]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["test", "test.tsv", "train", "train.tsv", "val",
                                                                "val.tsv"]
    truth = read_event_tsv(out / "data" / "test.tsv", metrics["labels"])
    assert len(truth) == 2 and sum(map(len, truth.values())) == metrics["num_test_events"] > 0
    assert set(read_event_tsv(out / "test_events.tsv", metrics["labels"])) <= set(truth)
    assert ASTForAudioClassification.from_pretrained(out / "model").config.frame_head
    assert (out / "scene.png").stat().st_size > 10_000
    assert not list(tmp_path.glob(".events.*"))  # no staging folder left behind
