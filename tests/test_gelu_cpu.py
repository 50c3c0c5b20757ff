"""The compiled GELU of float32 CPU training (`ast_hf.gelu_cpu`): gelu(x) and gelu'(x) from one pass, as close to
a float64 computation as torch's own float32 GELU on the same input; elementwise; used
by the model's MLP in float32 CPU training unless `AST_HF_FP32_TRAINING=torch`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ast_hf import onednn
from ast_hf.gelu_cpu import gelu, gelu_and_derivative
from helpers import kernel_setting

pytestmark = pytest.mark.numeric


def _float64_gelu_and_derivative(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.double().requires_grad_()
    out = F.gelu(leaf)
    out.sum().backward()
    return out.detach(), leaf.grad


def _torch_float32_gelu_and_derivative(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.gelu(x), torch.ops.aten.gelu_backward(torch.ones_like(x), x)


@pytest.mark.parametrize("scale", [0.1, 1.0, 4.0, 30.0])
def test_values_and_derivatives_are_as_close_to_float64_as_torchs(scale):
    """Inputs around 0 (where erf is linear), across the bend and far out on both sides (erf saturated, exp
    underflowing to subnormals and 0)."""
    x = torch.randn(257, 301, generator=torch.Generator().manual_seed(0)) * scale
    want = _float64_gelu_and_derivative(x)
    torch_errors = [(got.double() - w).abs().max().item() for got, w in
                    zip(_torch_float32_gelu_and_derivative(x), want, strict=True)]
    for name, got, w, torch_error in zip(("gelu", "gelu'"), gelu_and_derivative(x), want, torch_errors, strict=True):
        error = (got.double() - w).abs().max().item()
        assert error <= 4 * torch_error + 1e-7, (name, scale, error, torch_error)


def test_edge_values():
    x = torch.tensor([float("nan"), -30.0, 30.0, 0.0, -0.0, 1e-30, -1e-30, float("inf"), -1e4, 1e4])
    out, derivative = gelu_and_derivative(x)
    torch_out, torch_derivative = _torch_float32_gelu_and_derivative(x)
    assert out[0].isnan() and derivative[0].isnan()
    finite = slice(1, 7)
    assert torch.equal(out[finite], torch_out[finite]) and torch.equal(derivative[finite], torch_derivative[finite])
    assert out[7] == float("inf")  # the limit (torch's gives NaN)
    assert out[8] == 0 and derivative[8] == 0 and out[9] == 1e4 and derivative[9] == 1


def test_elementwise_whatever_the_size():
    x = torch.randn(200_003, generator=torch.Generator().manual_seed(1)) * 3
    whole, part = gelu_and_derivative(x), gelu_and_derivative(x[1000:1500])
    assert all(torch.equal(a[1000:1500], b) for a, b in zip(whole, part, strict=True))


def test_shapes_layouts_and_gradients():
    """Any shape and layout in (a strided view here), the input's shape out; the backward is the upstream gradient
    times gelu'(x), as close to float64 as torch's own."""
    base = torch.randn(4, 30, 80, generator=torch.Generator().manual_seed(2)) * 2
    x = base[:, ::3, :].requires_grad_()  # not contiguous
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out = gelu(x)
    assert out.shape == x.shape
    out.backward(upstream)
    leaf = x.detach().double().requires_grad_()
    F.gelu(leaf).backward(upstream.double())
    plain = x.detach().clone().requires_grad_()
    F.gelu(plain).backward(upstream)
    torch_error = (plain.grad.double() - leaf.grad).abs().max().item()
    assert (x.grad.double() - leaf.grad).abs().max().item() <= 4 * torch_error + 1e-7
    assert gelu(torch.empty(0, 5)).shape == (0, 5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_refuses_other_dtypes(dtype):
    with pytest.raises(ValueError, match="float32 CPU tensor"):
        gelu_and_derivative(torch.zeros(3, dtype=dtype))


@pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0: training runs torch's own ops")
@pytest.mark.parametrize("setting", ["auto", "onednn", "torch"])
def test_the_mlp_uses_it_in_float32_cpu_training_only(monkeypatch, setting):
    """`linear_layer(..., gelu=True)`: the compiled GELU while autograd records in float32 on the CPU, torch's
    under `AST_HF_FP32_TRAINING=torch`, in inference and under autocast; the values the same within float32
    rounding."""
    layer = torch.nn.Linear(16, 48)
    x = torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(4))
    with kernel_setting(monkeypatch, "AST_HF_FP32_TRAINING", onednn._measured_training_kernels) as force:
        force(setting)
        out = onednn.linear_layer(x, layer, gelu=True)
        assert type(out.grad_fn).__name__ == ("GeluBackward0" if setting == "torch" else "_GeluBackward")
        torch.testing.assert_close(out, F.gelu(F.linear(x, layer.weight, layer.bias)), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            assert onednn.linear_layer(x, layer, gelu=True).grad_fn is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert type(onednn.linear_layer(x, layer, gelu=True).grad_fn).__name__ == "GeluBackward0"
