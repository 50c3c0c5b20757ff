"""Deployment: ONNX (dynamic batch) against onnxruntime, torch.compile against eager, dynamic int8 with its
accuracy change measured on held-out synthetic clips, and `ast-hf export-onnx`."""

import json

import numpy as np
import pytest
import torch

from ast_hf import (
    ASTForAudioClassification,
    ASTModel,
    compare_models,
    compile_model,
    export_onnx,
    quantize_dynamic_int8,
)
from ast_hf.cli import main
from ast_hf.export import parameter_megabytes
from helpers import CLIP_SECONDS, RATE, noise, speech, tiny_config

ATOL = 1e-4  # fp32, as the issue asks


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ASTForAudioClassification(tiny_config(time_stride=12, id2label={i: f"class {i}" for i in range(5)},
                                                 label2id={f"class {i}": i for i in range(5)})).eval()


def test_onnx_export_matches_pytorch_at_any_batch_size(model, tmp_path):
    import onnx
    import onnxruntime

    result = export_onnx(model, tmp_path / "model.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff <= ATOL
    # Checked here too, independently of export_onnx's own check, at batch sizes it did not try.
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input_values" and session.get_outputs()[0].name == "logits"
    for batch in (2, 5):
        x = torch.randn(batch, 128, 128, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"input_values": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).logits.numpy(), atol=ATOL, rtol=0)
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(result.path)).metadata_props}
    assert meta["num_frames"] == 128 and meta["id2label"]["3"] == "class 3" and meta["output"] == "logits"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left behind


def test_onnx_backbone_export_and_a_failed_check_leaves_nothing(tmp_path):
    torch.manual_seed(0)
    backbone = ASTModel(tiny_config()).eval()
    result = export_onnx(backbone, tmp_path / "backbone.onnx", num_frames=64)
    assert result.output_name == "pooler_output" and result.max_abs_diff <= ATOL
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export_onnx(backbone, tmp_path / "strict.onnx", num_frames=64, atol=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.onnx"]
    with pytest.raises(ValueError, match="smaller than one"):
        export_onnx(backbone, tmp_path / "tiny.onnx", num_frames=8)


def test_onnx_check_does_not_pass_nan_outputs(tmp_path):
    """A NaN output is no match: the check must fail (it used to report a difference of 0.0 and write the file)."""
    torch.manual_seed(0)
    broken = ASTForAudioClassification(tiny_config(num_hidden_layers=1)).eval()
    with torch.no_grad():
        broken.classifier.dense.bias[0] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        export_onnx(broken, tmp_path / "nan.onnx", num_frames=64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("frames,fullgraph", [(128, True), (200, False)])
def test_torch_compile_matches_eager(frames, fullgraph):
    """At max_length frames the forward is one graph; other lengths compile with a graph break (see below)."""
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(num_hidden_layers=1)).eval()
    compiled = compile_model(model, fullgraph=fullgraph)
    x = torch.randn(2, frames, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_values=x).logits, model(input_values=x).logits, atol=ATOL, rtol=0)


def test_torch_compile_fullgraph_at_another_length():
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(num_hidden_layers=1)).eval()
    compiled = compile_model(model, fullgraph=True)
    with torch.no_grad():
        compiled(input_values=torch.randn(1, 200, 128))


def held_out_set(fe):
    """30 clips the tiny model never saw: another voice, other tone frequencies, other noise seeds."""
    n = round(CLIP_SECONDS * RATE)
    rng = np.random.default_rng(123)
    long = speech(10.0, voice="en-us+m3", seed=11)
    clips = [long[s:s + n] for s in rng.integers(0, len(long) - n, size=10)]
    t = np.arange(n) / RATE
    clips += [(0.4 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in rng.uniform(250, 2800, size=10)]
    clips += [noise(CLIP_SECONDS, ("white", "pink", "brown")[i % 3], seed=100 + i) for i in range(10)]
    x = fe(clips, sampling_rate=RATE, return_tensors="pt")["input_values"]
    return x, torch.tensor([0] * 10 + [1] * 10 + [2] * 10)


def test_dynamic_int8_accuracy_change_is_measured_and_small(trained):
    model, fe = trained
    quantized = quantize_dynamic_int8(model)
    assert type(quantized.audio_spectrogram_transformer.encoder.layer[0].intermediate.dense).__module__.startswith(
        "torch.ao.nn.quantized")
    assert model.audio_spectrogram_transformer.encoder.layer[0].intermediate.dense.weight.dtype == torch.float32
    x, labels = held_out_set(fe)
    report = compare_models(model, quantized, x, labels)
    print(f"\nint8: accuracy {report.accuracy_reference:.3f} -> {report.accuracy_other:.3f} "
          f"(change {report.accuracy_change:+.3f}), top-1 agreement {report.top1_agreement:.3f}, "
          f"max |logit diff| {report.max_abs_logit_diff:.4f}, size {parameter_megabytes(model):.2f} -> "
          f"{parameter_megabytes(quantized):.2f} MB")
    assert report.accuracy_reference >= 0.8
    assert report.top1_agreement >= 0.9 and abs(report.accuracy_change) <= 0.1
    assert 0 < report.max_abs_logit_diff < 1.0
    assert parameter_megabytes(quantized) < parameter_megabytes(model)


def test_cli_export_onnx(model, tmp_path, capsys):
    from ast_hf import ASTFeatureExtractor

    model.save_pretrained(tmp_path / "model")
    ASTFeatureExtractor(max_length=128).save_pretrained(tmp_path / "model")
    assert main(["export-onnx", str(tmp_path / "model"), str(tmp_path / "out" / "model.onnx")]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "max |onnxruntime - PyTorch|" in out
    assert (tmp_path / "out" / "model.onnx").is_file()
    assert main(["export-onnx", str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 1
    assert "no model folder" in capsys.readouterr().err


def test_compare_models_refuses_bad_labels_and_inputs(model):
    values = torch.randn(3, 128, 128)
    comparison = compare_models(model, model, values, labels=[0, 1, 2])  # a list of class indices is fine
    assert comparison.accuracy_change == 0.0
    with pytest.raises(ValueError, match="3 class indices"):
        compare_models(model, model, values, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 class indices"):
        compare_models(model, model, values, labels=torch.eye(5)[:3])
    with pytest.raises(ValueError, match="non-empty"):
        compare_models(model, model, values[:0])
    with pytest.raises(ValueError, match="batch_size"):
        compare_models(model, model, values, batch_size=0)
    with pytest.raises(ValueError, match=r"labels must be 3 class indices"):  # booleans are not class indices
        compare_models(model, model, values, labels=torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="compares classifiers.*the other is a ASTModel"):
        compare_models(model, model.audio_spectrogram_transformer, values)
