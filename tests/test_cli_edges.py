"""Edge inputs of the `ast-hf` subcommands and the app: bad numeric options are refused once with a message naming
the option (no traceback, no silent replacement, no output written), and an explained segment too short to hold one
frame is named as such."""

import numpy as np
import pytest
import soundfile as sf
import torch

from ast_hf import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification
from helpers import RATE, run_cli

LABELS = ["speech", "tone", "noise"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    torch.manual_seed(0)
    config = ASTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                       num_labels=3, max_length=128, id2label=dict(enumerate(LABELS)),
                       label2id={c: i for i, c in enumerate(LABELS)})
    ASTForAudioClassification(config).save_pretrained(root / "model")
    ASTFeatureExtractor(max_length=128).save_pretrained(root / "model")
    wave = (0.3 * np.random.default_rng(0).standard_normal(4 * RATE)).astype(np.float32)
    sf.write(root / "rec.wav", wave, RATE)
    sf.write(root / "short.wav", wave[:RATE], RATE)
    return root


@pytest.mark.parametrize("value", ["0", "-2"])
def test_predict_batch_mode_refuses_a_batch_size_below_one(files, tmp_path, capsys, value):
    # It was silently replaced by 8 (`args.batch_size or 8`) for 0.
    output = tmp_path / "out.jsonl"
    code, _, err = run_cli(capsys, "predict", files / "rec.wav", files / "short.wav", "--model", files / "model",
                           "--output", output, "--num-workers", "0", "--no-progress", "--batch-size", value)
    assert code == 1 and "batch_size must be" in err and value in err and "Traceback" not in err
    assert not output.exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_embed_refuses_a_batch_size_below_one(files, tmp_path, capsys, value):
    # It was accepted: every window of a recording then went into one model call.
    output = tmp_path / "emb.npz"
    code, _, err = run_cli(capsys, "embed", files / "rec.wav", "--model", files / "model", "--output", output,
                           "--batch-size", value)
    assert code == 1 and f"--batch-size must be at least 1, got {value}" in err
    assert not output.exists()


def test_embed_refuses_a_bad_hop_once_not_per_file(files, tmp_path, capsys):
    output = tmp_path / "emb.npz"
    code, _, err = run_cli(capsys, "embed", files / "rec.wav", files / "short.wav", "--model", files / "model",
                           "--output", output, "--hop", "0")
    assert code == 1 and "ast-hf embed: error: hop must be a positive" in err
    assert "skipped" not in err and err.count("hop must be") == 1
    assert not output.exists()


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_export_onnx_refuses_a_bad_atol(files, tmp_path, capsys, value):
    # A negative tolerance used to fail every check with a RuntimeError traceback after the export.
    code, _, err = run_cli(capsys, "export-onnx", files / "model", tmp_path / "m.onnx", "--atol", value)
    assert code == 1 and "--atol must be a non-negative number" in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_onnx_check_failure_is_an_error_message(files, tmp_path, capsys, monkeypatch):
    import ast_hf.export

    def differs(*args, **kwargs):
        raise RuntimeError("the ONNX graph differs from PyTorch by 1.00e-02 > 1e-04; not written")

    monkeypatch.setattr(ast_hf.export, "export_onnx", differs)
    code, _, err = run_cli(capsys, "export-onnx", files / "model", tmp_path / "m.onnx")
    assert code == 1 and "ast-hf export-onnx: error: the ONNX graph differs" in err


@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_listen_refuses_an_infinite_block(files, capsys, value):
    # --block inf passed the `> 0` check and crashed with OverflowError (round(inf)).
    code, out, err = run_cli(capsys, "listen", "--stdin", "--model", files / "model", f"--block={value}")
    assert code == 1 and "--block must be a positive number of seconds" in err and out == ""


def test_app_explained_segment_shorter_than_a_frame_is_named(files, tmp_path):
    from ast_hf.app import analyse_recording
    from ast_hf.model_loading import load_for_inference

    model, fe = load_for_inference(files / "model", "cpu")
    # 10 ms before the end: 160 samples, under one 25 ms frame; it said "clip 0 has 160 samples ...".
    with pytest.raises(ValueError, match=r"explained segment from 3\.99 s would last 10 ms.*at most at 3\.98 s"):
        analyse_recording(model, fe, files / "rec.wav", tmp_path, explain_start=3.99)
    result = analyse_recording(model, fe, files / "rec.wav", tmp_path, explain_start=3.9)
    assert result.segment == pytest.approx((3.9, 4.0))


def test_embed_with_no_file_embedded_is_an_error_not_a_silent_return(files, tmp_path, capsys):
    """embed_files returned its {path: error} map and wrote nothing when every file failed: a library caller who
    did not inspect it had no output and no exception. Now a ValueError that names a failure; an existing output
    is left as it was."""
    from ast_hf import ASTFeatureExtractor, ASTModel
    from ast_hf.embeddings import embed_files

    model, fe = ASTModel.from_pretrained(files / "model").eval(), ASTFeatureExtractor.from_pretrained(files / "model")
    output, empty = tmp_path / "emb.npz", tmp_path / "empty.wav"
    output.write_bytes(b"an earlier run's embeddings")
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"none of the 1 files could be embedded \(.*empty\.wav.*was not written"):
        embed_files([str(empty)], model, fe, output, progress=False)
    with pytest.raises(ValueError, match="no files to embed"):
        embed_files([], model, fe, output, progress=False)
    assert output.read_bytes() == b"an earlier run's embeddings"
    code, out, err = run_cli(capsys, "embed", empty, "--model", files / "model", "--output", output)
    assert code == 1 and "ast-hf embed: error: none of the 1 files could be embedded" in err and "wrote" not in out
