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


def _unusable_cuda_device() -> str:
    """A CUDA device this machine does not have: cuda:<count> (with no GPU, every cuda device is one)."""
    return f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"


@pytest.mark.parametrize("device", ["bogus", "cuda9", _unusable_cuda_device()])
def test_a_device_this_machine_cannot_use_is_named_in_every_command(files, tmp_path, capsys, device):
    """torch raised a RuntimeError traceback for an unknown device name or a CUDA device the machine lacks, and
    batch predict never used --device at all (it ran on the CPU with exit code 0). Now one error line naming
    --device, before any model is loaded, and nothing is written."""
    commands = {
        "predict one": ["predict", files / "rec.wav", "--no-progress"],
        "predict batch": ["predict", files / "rec.wav", files / "short.wav", "--output", tmp_path / "p.jsonl",
                          "--num-workers", "0", "--no-progress"],
        "embed": ["embed", files / "rec.wav", "--output", tmp_path / "e.npz"],
        "detect": ["detect", files / "rec.wav", "--events", tmp_path / "e.tsv", "--no-progress"],
        "explain": ["explain", files / "rec.wav", "--out", tmp_path / "x.png"],
        "listen": ["listen", "--realtime", files / "short.wav"],
    }
    for name, argv in commands.items():
        code, out, err = run_cli(capsys, *argv, "--model", files / "model", "--device", device)
        assert code == 1 and f"--device {device}" in err.replace("'", ""), (name, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
    assert list(tmp_path.iterdir()) == []


def test_batch_predict_runs_the_model_where_device_says(files, tmp_path):
    """predict_files put the model on the rank's default device whatever the caller asked; `device=` is used."""
    from ast_hf import predict_files

    model = ASTForAudioClassification.from_pretrained(files / "model").eval()
    fe = ASTFeatureExtractor.from_pretrained(files / "model")
    summary = predict_files([files / "rec.wav"], model, fe, tmp_path / "p.jsonl", num_workers=0, progress=False,
                            device="cpu")
    assert summary.scored == 1 and next(model.parameters()).device == torch.device("cpu")


@pytest.mark.parametrize("command", ["embed", "detect", "explain", "predict --timeline", "predict --plot"])
def test_an_output_file_that_is_a_folder_is_refused_before_the_work(files, tmp_path, capsys, command):
    """The folder was found only when the result was moved into place, after all the scoring, and the message named
    a temporary file ('Is a directory: .x.tmp -> out'); predict --output already refused it at once."""
    folder = tmp_path / "out"
    folder.mkdir()
    argv = {"embed": ["embed", files / "rec.wav", "--output", folder],
            "detect": ["detect", files / "rec.wav", "--events", folder, "--no-progress"],
            "explain": ["explain", files / "rec.wav", "--out", folder],
            "predict --timeline": ["predict", files / "rec.wav", "--timeline", folder, "--no-progress"],
            "predict --plot": ["predict", files / "rec.wav", "--plot", folder, "--no-progress"]}[command]
    code, out, err = run_cli(capsys, *argv, "--model", files / "model")
    assert code == 1 and f"{folder} is a folder; give the path of the file to write" in err
    assert ".tmp" not in err and "wrote" not in out and "windows" not in out
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("command", ["detect", "embed"])
def test_an_input_folder_without_audio_is_named_as_predict_names_it(files, tmp_path, capsys, command):
    """detect said '0 of 0 files failed; nothing written' after loading the model; embed 'no files to embed'."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = {"detect": ["--events", tmp_path / "e.tsv"], "embed": ["--output", tmp_path / "e.npz"]}[command]
    code, _, err = run_cli(capsys, command, empty, "--model", files / "model", *out)
    assert code == 1 and "no input files: give audio files, folders holding audio" in err
    code, _, err_predict = run_cli(capsys, "predict", empty, "--model", files / "model", "--output",
                                   tmp_path / "p.jsonl")
    assert code == 1 and err_predict.split("error: ")[1] == err.split("error: ")[1]


@pytest.mark.parametrize("options, named, needed", [
    (["--stdin", "--threshold", "0.3", "--median-filter", "3"], "--threshold, --median-filter", "--print events"),
    (["--stdin", "--label-threshold", "speech=0.4"], "--label-threshold", "--print events"),
    (["--realtime", "x.wav", "--sampling-rate", "8000"], "--sampling-rate", "--stdin"),
    (["--realtime", "x.wav", "--format", "f32le"], "--format", "--stdin")])
def test_listen_refuses_options_it_would_ignore(capsys, options, named, needed):
    """With the default --print windows the event options were accepted and did nothing; so were --format and
    --sampling-rate without --stdin. Now one error line names them and what they need, before a model is loaded."""
    code, _, err = run_cli(capsys, "listen", "--model", "/no/such/model", *options)
    assert code == 1 and f"ast-hf listen: error: {named} only shape" in err and needed in err
    assert "no model folder" not in err
