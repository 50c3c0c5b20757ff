"""`ast-hf predict / embed / explain`: outputs of a run, and clear errors with exit code 1 for bad input
(unreadable file, zero-length recording, window longer than the file, hop <= 0, missing file or model)."""

import csv

import numpy as np
import pytest
import soundfile as sf
import torch

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification
from helpers import RATE, recording, run_cli, tiny_config

LABELS = ["speech", "tone", "noise"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(num_labels=3, id2label=dict(enumerate(LABELS)),
                                                  label2id={c: i for i, c in enumerate(LABELS)}))
    model.save_pretrained(root / "model")
    ASTFeatureExtractor(max_length=128).save_pretrained(root / "model")
    wave, _ = recording()
    sf.write(root / "rec.wav", wave, RATE)
    sf.write(root / "short.wav", wave[: RATE // 2], RATE)
    sf.write(root / "empty.wav", np.zeros(0, np.float32), RATE)
    (root / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt " + bytes(range(256)) * 4)
    return root


def test_predict_one_file_prints_labels_and_writes_timeline_and_plot(files, tmp_path, capsys):
    code, out, err = run_cli(capsys, "predict", files / "rec.wav", "--model", files / "model", "--timeline",
                         tmp_path / "t.csv", "--plot", tmp_path / "t.png", "--top-k", "2", "--no-progress")
    assert code == 0, err
    assert "18 windows" in out and sum(name in out for name in LABELS) >= 2
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == 18 * 2 and {"start", "end", "label", "score"} <= set(rows[0])
    assert (tmp_path / "t.png").stat().st_size > 10_000
    # --threshold keeps only labels scoring at least that much (softmax over 3 labels: at most 2 reach 0.34).
    code, out, _ = run_cli(capsys, "predict", files / "rec.wav", "--model", files / "model", "--timeline",
                       tmp_path / "u.csv", "--threshold", "0.34", "--top-k", "0", "--no-progress")
    rows = list(csv.DictReader(open(tmp_path / "u.csv")))
    assert code == 0 and all(float(r["score"]) >= 0.34 for r in rows) and len(rows) <= 18 * 2


@pytest.mark.parametrize("name,args,message", [
    ("corrupt.wav", [], "cannot decode"),
    ("empty.wav", [], "zero-length"),
    ("short.wav", ["--window", "2.0"], "longer than"),
    ("rec.wav", ["--hop", "0"], "hop must be a positive"),
    ("rec.wav", ["--hop", "-1"], "hop must be a positive"),
    ("rec.wav", ["--window", "-3"], "window must be a positive"),
    ("missing.wav", [], "no such audio file"),
])
def test_predict_bad_input_gives_a_clear_error(files, tmp_path, capsys, name, args, message):
    code, out, err = run_cli(capsys, "predict", files / name, "--model", files / "model", "--no-progress",
                         "--timeline", tmp_path / "t.csv", *args)
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "t.csv").exists()


def test_predict_bad_model_and_option_mixes(files, tmp_path, capsys):
    code, _, err = run_cli(capsys, "predict", files / "rec.wav", "--model", tmp_path / "nope", "--no-progress")
    assert code == 1 and "no model folder" in err
    code, _, err = run_cli(capsys, "predict", files / "rec.wav", files / "short.wav", "--model", files / "model",
                       "--plot", tmp_path / "p.png")
    assert code == 1 and "--timeline and --plot describe one recording" in err


def test_a_negative_top_k_is_refused(files, capsys):
    from ast_hf.inference import select_top

    scores = np.array([0.1, 0.7, 0.4])
    assert select_top(scores, LABELS, 2) == [("tone", pytest.approx(0.7)), ("noise", pytest.approx(0.4))]
    assert len(select_top(scores, LABELS, 0)) == len(select_top(scores, LABELS, None)) == 3
    with pytest.raises(ValueError, match="k must be >= 0.*-1"):
        select_top(scores, LABELS, -1)
    for command in (["predict", files / "rec.wav", "--no-progress"], ["listen", "--stdin"]):
        code, out, err = run_cli(capsys, *command, "--model", files / "model", "--top-k", "-1")
        assert code == 1 and "--top-k must be >= 0 (0: all), got -1" in err and "Traceback" not in err, err
        assert out == ""


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_threshold_that_is_no_score_is_refused(files, capsys, value):
    """`--threshold nan` compared false with every score and printed no label, without a word."""
    from ast_hf.inference import select_top

    with pytest.raises(ValueError, match="threshold must be a finite score"):
        select_top(np.array([0.1, 0.7, 0.4]), LABELS, 2, float(value))
    code, out, err = run_cli(capsys, "predict", files / "rec.wav", "--no-progress", "--model", files / "model",
                             "--threshold", value)
    assert code == 1 and "--threshold must be a finite score" in err and "Traceback" not in err, err
    assert out == ""


def test_predict_many_files_with_an_ensemble(files, tmp_path, capsys):
    torch.manual_seed(1)
    other = ASTForAudioClassification.from_pretrained(files / "model")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.save_pretrained(tmp_path / "other")
    output = tmp_path / "out.jsonl"
    code, _, err = run_cli(capsys, "predict", files / "rec.wav", files / "short.wav", files / "corrupt.wav", "--model",
                       files / "model", "--model", tmp_path / "other", "--output", output, "--num-workers", "0",
                       "--no-progress")
    assert code == 1 and "corrupt.wav" in err and "2 scored now" in err
    import json

    records = [json.loads(line) for line in open(output)]
    assert [r["path"].rsplit("/", 1)[1] for r in records] == ["rec.wav", "short.wav"]
    assert all(abs(sum(r["scores"]) - 1) < 1e-4 for r in records)  # averaged softmax probabilities, top-5 = all 3


def test_embed_writes_npz(files, tmp_path, capsys):
    output = tmp_path / "emb.npz"
    code, out, err = run_cli(capsys, "embed", files / "rec.wav", files / "short.wav", files / "empty.wav", "--model",
                         files / "model", "--output", output, "--patches")
    assert code == 1 and "empty.wav" in err  # the empty file is reported, the others are written
    data = np.load(output)  # no pickles needed
    assert [p.rsplit("/", 1)[1] for p in data["paths"]] == ["rec.wav", "short.wav"]
    assert data["embeddings"].shape == (2, 64)
    assert data["window_embeddings"].shape == (19, 64) and data["window_file"].tolist() == [0] * 18 + [1]
    assert data["patches_0"].shape == (18, 12, 12, 64) and data["patches_1"].shape == (1, 12, 12, 64)
    np.testing.assert_allclose(data["embeddings"][0], data["window_embeddings"][:18].mean(0), atol=1e-6)


def test_explain_writes_png_and_checks_the_segment(files, tmp_path, capsys):
    code, out, err = run_cli(capsys, "explain", files / "rec.wav", "--model", files / "model", "--out",
                         tmp_path / "map.png", "--start", "3.5", "--duration", "1.0")
    assert code == 0, err
    assert (tmp_path / "map.png").stat().st_size > 10_000 and "patch grid 12x12" in out
    code, _, err = run_cli(capsys, "explain", files / "rec.wav", "--model", files / "model", "--out",
                       tmp_path / "bad.png", "--start", "20")
    assert code == 1 and "outside the recording" in err and not (tmp_path / "bad.png").exists()
    code, _, err = run_cli(capsys, "explain", files / "empty.wav", "--model", files / "model", "--out",
                           tmp_path / "e.png")
    assert code == 1 and "zero-length" in err


def test_model_argument_tells_folders_from_hub_ids(tmp_path):
    from ast_hf.model_loading import load_for_inference

    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_for_inference(tmp_path / "missing" / "model")
    # A Hub id with dots is not taken for a missing file: it goes to the Hub (offline here: OSError).
    with pytest.raises(OSError) as error:
        load_for_inference("MIT/ast-finetuned-audioset-10-10-0.4593")
    assert not isinstance(error.value, FileNotFoundError)
