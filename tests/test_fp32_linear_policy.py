"""The per-host choice of kernel for float32 linears in CPU inference and training: either way the model's numbers
stay those of torch's plain ops, and "auto" runs its probe. Float32 CPU training (`onednn.differentiable_linear`):
each of a linear's three GEMMs (forward, input and weight gradients) through oneDNN or torch's op, as
`float32_training_kernels` chose per shape (or `AST_HF_FP32_TRAINING` forced): every combination stays within float32
rounding of a float64 computation, as close as torch's own float32 ops on the same input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ast_hf import ASTForAudioClassification, onednn
from helpers import kernel_setting, tiny_config

pytestmark = [pytest.mark.numeric,
              pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0: float32 linears are torch's own")]


@pytest.fixture
def choose(monkeypatch):
    """Force `AST_HF_FP32_LINEAR` to a value and return the choice; the cached choice is forgotten before and
    after."""
    with kernel_setting(monkeypatch, "AST_HF_FP32_LINEAR", onednn.float32_linear, read=True) as force:
        yield force


@pytest.fixture
def choose_training(monkeypatch):
    """Force `AST_HF_FP32_TRAINING` to a value; the measured answers are forgotten before and after."""
    with kernel_setting(monkeypatch, "AST_HF_FP32_TRAINING", onednn._measured_training_kernels) as force:
        yield force


@pytest.mark.parametrize("kernel", ["onednn", "blas"])
def test_both_kernels_give_the_plain_models_logits(choose, kernel, monkeypatch):
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(max_length=256)).eval()
    x = torch.randn(3, 256, 128)
    with torch.no_grad():
        monkeypatch.setattr(onednn, "DTYPES", ())  # what AST_HF_ONEDNN=0 sets: torch's ops only
        want = model(x).logits
        monkeypatch.undo()
        assert choose(kernel) == kernel
        calls = []
        real = onednn.linear
        monkeypatch.setattr(onednn, "linear", lambda *a, **k: calls.append(1) or real(*a, **k))
        got = model(x).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert bool(calls) == (kernel == "onednn")  # the chosen kernel really ran


def test_auto_runs_the_probe_and_chooses_a_kernel(choose):
    assert choose("auto") in ("onednn", "blas")


def test_unknown_setting_is_refused(choose):
    with pytest.raises(ValueError, match="AST_HF_FP32_LINEAR"):
        choose("fastest")


def _gradients(x, weight, bias, upstream, linear):
    """(output, grad x, grad weight, grad bias) of `linear` at float copies of the inputs that require grad."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None for t in (x, weight, bias)]
    out = linear(*leaves)
    out.backward(upstream)
    return [out.detach()] + [None if t is None or not t.requires_grad else t.grad for t in leaves]


def _max_error(got, want) -> float:
    return max(0.0 if g is None else (g.double() - w).abs().max().item() for g, w in zip(got, want, strict=True))


# (x shape, in, out, bias, x a strided slice, weight trainable): wider and narrower outputs, 3-D and 2-D inputs,
# no bias, a non-contiguous input, a frozen weight (input gradients only, as for saliency maps)
CASES = [((2, 37, 48), 48, 160, True, False, True), ((70, 160), 160, 48, True, False, True),
         ((3, 20, 64), 64, 64, False, False, True), ((2, 41, 48), 48, 96, True, True, True),
         ((2, 30, 32), 32, 80, True, False, False)]
# Kernels for (forward, grad input, grad weight): each GEMM through each kernel, and mixtures of the two
KERNELS = [("onednn", "onednn", "onednn"), ("torch", "torch", "torch"), ("onednn", "onednn", "torch"),
           ("torch", "torch", "onednn")]


@pytest.mark.parametrize("kernels", KERNELS, ids="-".join)
@pytest.mark.parametrize("shape, width, out_features, has_bias, strided, trainable", CASES)
def test_gradients_are_as_close_to_float64_as_torchs_own(shape, width, out_features, has_bias, strided, trainable,
                                                         kernels):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape[:-1], width * (2 if strided else 1), generator=generator)
    x = (x[..., ::2] if strided else x).requires_grad_()
    weight = torch.randn(out_features, width, generator=generator).requires_grad_(trainable)
    bias = torch.randn(out_features, generator=generator).requires_grad_() if has_bias else None
    upstream = torch.randn(*shape[:-1], out_features, generator=generator)
    want = _gradients(*(None if t is None else t.double() for t in (x, weight, bias, upstream)), linear=F.linear)
    torch_error = _max_error(_gradients(x, weight, bias, upstream, F.linear), want)
    assert onednn.float32_training(x, weight)
    got = _gradients(x, weight, bias, upstream,
                     lambda *tensors: onednn._Float32Linear.apply(*tensors, kernels))
    assert (got[2] is None) == (not trainable)
    # within a few float32 roundings of the float64 result, as torch's own float32 GEMMs are on this input
    assert _max_error(got, want) <= 4 * torch_error + 1e-6, (_max_error(got, want), torch_error)


@pytest.mark.parametrize("setting", ["onednn", "torch", "auto"])
def test_the_setting_decides_which_kernels_run(choose_training, setting, monkeypatch):
    """"onednn" sends all three GEMMs through oneDNN's autograd function, "torch" runs torch's own op (no function),
    "auto" what the probe chose for the shape; the gradients are torch's within float32 rounding either way."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 64, generator=generator, requires_grad=True)
    weight = torch.randn(96, 64, generator=generator, requires_grad=True)
    upstream = torch.randn(3, 50, 96, generator=generator)
    want = _gradients(x, weight, None, upstream, F.linear)
    choose_training(setting)
    kernels = onednn.float32_training_kernels(150, 64, 96)
    assert kernels == {"onednn": ("onednn",) * 3, "torch": ("torch",) * 3}.get(setting, kernels)
    assert len(kernels) == 3 and set(kernels) <= {"onednn", "torch"}
    calls = []
    real = onednn._Float32Linear.apply
    monkeypatch.setattr(onednn._Float32Linear, "apply", lambda *a: calls.append(a[-1]) or real(*a))
    got = _gradients(x, weight, None, upstream, onednn.differentiable_linear)
    assert calls == ([kernels] if "onednn" in kernels else [])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_auto_measures_once_per_row_bucket(choose_training):
    """Row counts near the same power of two share one measured answer (batches of varying length do not probe
    again); the probe measures at most `FP32_TRAINING_PROBE_MAX_ROWS` rows."""
    choose_training("auto")
    first = onednn.float32_training_kernels(1000, 32, 48)
    assert onednn.float32_training_kernels(1100, 32, 48) == first
    assert onednn._measured_training_kernels.cache_info().misses == 1
    assert onednn._probe_rows(1000) == onednn._probe_rows(1100) == 1024
    assert onednn._probe_rows(1) == 1 and onednn._probe_rows(10 ** 6) == onednn.FP32_TRAINING_PROBE_MAX_ROWS


def test_unknown_training_setting_is_refused(choose_training):
    choose_training("fastest")
    with pytest.raises(ValueError, match="AST_HF_FP32_TRAINING"):
        onednn.float32_training_kernels(10, 8, 8)


def test_float32_training_only_with_autograd_outside_autocast():
    x, weight = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    assert onednn.float32_training(x, weight)
    with torch.no_grad():
        assert not onednn.float32_training(x, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.float32_training(x, weight)  # autocast casts as torch's F.linear does
    assert not onednn.float32_training(x.double(), weight.double())
    assert not onednn.float32_training(x[:0], weight)  # no rows: nothing for oneDNN to build


@pytest.mark.parametrize("setting", ["onednn", "auto"])
def test_a_training_step_gives_the_gradients_of_torchs_ops(choose_training, setting):
    """The whole model: every parameter's gradient through the chosen kernels as close to a float64 step as torch's
    float32."""
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(num_labels=5)).train()
    reference = ASTForAudioClassification(tiny_config(num_labels=5)).train().double()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 4, 2])

    def grads(m, inputs):
        m.zero_grad()
        torch.manual_seed(1)  # the same dropout masks (the tiny config has none; kept for safety)
        m(inputs, labels=y).loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    want = grads(reference, x.double())
    choose_training("torch")
    plain = grads(model, x)
    choose_training(setting)
    ours = grads(model, x)
    for name, grad in want.items():
        torch_error = (plain[name].double() - grad).abs().max().item()
        error = (ours[name].double() - grad).abs().max().item()
        assert error <= 4 * torch_error + 1e-6, (name, error, torch_error)
