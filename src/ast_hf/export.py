"""Deployment: ONNX export checked against onnxruntime, `torch.compile`, dynamic int8 quantisation for CPU.

* `export_onnx` traces the model with `torch.export` (the dynamo ONNX exporter) for inputs of a fixed frame
  count (default: the model's `max_length`) and any batch size, then runs the file in onnxruntime and compares
  it with PyTorch (fp32, default tolerance 1e-4) before moving it into place.
* `compile_model` is `torch.compile(model)`: at `max_length` frames the AST forward is one graph.
* `quantize_dynamic_int8` converts every `nn.Linear` to int8 weights with dynamically quantised activations
  (fbgemm CPU kernels); `compare_models` measures what that changes on a set of inputs.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic_io import atomic_path


class _OutputOnly(nn.Module):
    """`input_values` -> logits (classifier) or pooled output (backbone), a plain tensor for export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.output_name = "logits" if hasattr(model, "classifier") else "pooler_output"

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(input_values=input_values), self.output_name)


@dataclass
class OnnxExport:
    """Where the model went and how far onnxruntime is from PyTorch on random inputs (max |difference|)."""

    path: Path
    output_name: str
    num_frames: int
    max_abs_diff: float | None


def onnx_max_difference(module: nn.Module, onnx_path: str | Path, inputs: list[torch.Tensor]) -> float:
    """Largest |onnxruntime - PyTorch| over the outputs of `inputs` ([batch, frames, mel bins] each); NaN when
    either side has a NaN output (a NaN is no match, not a zero difference)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        expected = module(x).detach().float().numpy()
        got = session.run(None, {"input_values": x.numpy()})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"onnxruntime returned shape {got.shape}, PyTorch {expected.shape}")
        # np.max keeps a NaN; Python's max(worst, nan) would drop it and report the NaN outputs as a match
        worst = float(np.max([worst, np.abs(got - expected).max()]))
    return worst


def _add_metadata(path: Path, metadata: dict) -> None:
    """Store JSON-encoded `metadata` in the ONNX file's metadata_props (label names travel with the graph)."""
    import json

    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))


def export_onnx(model: nn.Module, path: str | Path, num_frames: int | None = None, opset: int = 18,
                check: bool = True, atol: float = 1e-4) -> OnnxExport:
    """Export an `ASTForAudioClassification` (logits) or `ASTModel` (pooled output) to ONNX.

    Args:
        path: the .onnx file, written atomically (a failed check leaves nothing behind). Its metadata_props hold
            `id2label`, `num_frames`, `num_mel_bins` and `output` as JSON.
        num_frames: frames of the exported input [batch, num_frames, mel bins] (default `config.max_length`);
            the batch dimension is dynamic.
        opset: ONNX opset.
        check: run the file in onnxruntime at batch sizes 1 and 3 and raise `RuntimeError` beyond `atol` (or on a
            NaN output, from onnxruntime or PyTorch).
    """
    config = model.config
    num_frames = config.max_length if num_frames is None else num_frames
    config.patch_grid(num_frames)  # a clear error for too few frames
    model = copy.deepcopy(model).float().cpu()
    if num_frames != config.max_length:
        # Bake the adapted position embeddings in: the graph then holds them as a constant, with no resize.
        model.resize_max_length(num_frames)
    module = _OutputOnly(model).eval()
    example = torch.randn(2, num_frames, config.num_mel_bins)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        # Traced with autograd on: the model's no-grad CPU fast path (oneDNN linear) has no ONNX equivalent.
        with torch.enable_grad():
            torch.onnx.export(module, (example,), str(tmp), input_names=["input_values"],
                              output_names=[module.output_name], dynamic_shapes={"input_values": {0: batch}},
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
        _add_metadata(tmp, {"num_frames": num_frames, "num_mel_bins": config.num_mel_bins,
                            "output": module.output_name,
                            "id2label": {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}})
        diff = None
        if check:
            generator = torch.Generator().manual_seed(0)
            inputs = [torch.randn(b, num_frames, config.num_mel_bins, generator=generator) for b in (1, 3)]
            with torch.no_grad():
                diff = onnx_max_difference(module, tmp, inputs)
            if not diff <= atol:  # also catches NaN outputs
                raise RuntimeError(f"the ONNX graph differs from PyTorch by {diff:.2e} > {atol:.0e}"
                                   f"{' (NaN outputs: check the weights for NaN)' if np.isnan(diff) else ''}; "
                                   f"not written")
    return OnnxExport(path=path, output_name=module.output_name, num_frames=num_frames, max_abs_diff=diff)


def compile_model(model: nn.Module, **kwargs) -> nn.Module:
    """`torch.compile(model, **kwargs)`; the first call per input shape compiles (slow), later calls are fast.

    Any input length compiles to one graph (`fullgraph=True` works): while compiling, the position embeddings
    are adapted inside the graph rather than read from the eager-mode cache.
    """
    return torch.compile(model, **kwargs)


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` with every `nn.Linear` in int8 (weights per tensor, activations quantised on the fly).

    Uses `torch.ao.quantization.quantize_dynamic` (fbgemm kernels, no calibration data). PyTorch marks that API
    deprecated in favour of torchao; it is still the one with fast eager CPU kernels.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as error:  # pragma: no cover - depends on the PyTorch build
        raise RuntimeError("this PyTorch has no torch.ao.quantization; use torchao's quantize_ instead") from error
    model = copy.deepcopy(model).float().cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@dataclass
class ModelComparison:
    """How a changed model (int8, compiled, ONNX...) differs from the reference on the same inputs."""

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    accuracy_reference: float | None
    accuracy_other: float | None
    seconds_reference: float
    seconds_other: float

    @property
    def accuracy_change(self) -> float | None:
        if self.accuracy_reference is None:
            return None
        return self.accuracy_other - self.accuracy_reference


@torch.no_grad()
def compare_models(reference: nn.Module, other: nn.Module, input_values: torch.Tensor,
                   labels: torch.Tensor | None = None, batch_size: int = 16) -> ModelComparison:
    """Run both classifiers over `input_values` [n, frames, mel bins] and compare logits, top-1 labels, accuracy
    against `labels` [n] (class indices) when given, and wall time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if input_values.ndim != 3 or input_values.shape[0] == 0:
        raise ValueError(f"input_values must be a non-empty [n, frames, mel bins] batch, got shape "
                         f"{tuple(input_values.shape)}")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != input_values.shape[:1] or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be {input_values.shape[0]} class indices [n], one per input, got "
                             f"{labels.dtype} of shape {tuple(labels.shape)}")

    for name, model in (("reference", reference), ("other", other)):
        if not hasattr(getattr(model, "_orig_mod", model), "classifier"):  # _orig_mod: a torch.compile'd model
            # a backbone (ASTModel) has no logits: it failed with an AttributeError after its forward
            raise ValueError(f"compare_models compares classifiers (ASTForAudioClassification and its exported or "
                             f"quantised forms); the {name} is a {type(model).__name__}")

    def run(model):
        start = time.perf_counter()
        out = torch.cat([model(input_values=x).logits.float() for x in input_values.split(batch_size)])
        return out, time.perf_counter() - start

    ref, t_ref = run(reference)
    got, t_got = run(other)
    diff = (ref - got).abs()
    agreement = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    acc_ref = acc_got = None
    if labels is not None:
        labels = labels.to(ref.device)
        acc_ref = (ref.argmax(-1) == labels).float().mean().item()
        acc_got = (got.argmax(-1) == labels).float().mean().item()
    return ModelComparison(max_abs_logit_diff=diff.max().item(), mean_abs_logit_diff=diff.mean().item(),
                           top1_agreement=agreement, accuracy_reference=acc_ref, accuracy_other=acc_got,
                           seconds_reference=t_ref, seconds_other=t_got)


def parameter_megabytes(model: nn.Module) -> float:
    """Size of the model's state dict in MB (int8 packed weights included)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


__all__ = ["OnnxExport", "export_onnx", "onnx_max_difference", "compile_model", "quantize_dynamic_int8",
           "ModelComparison", "compare_models", "parameter_megabytes"]
