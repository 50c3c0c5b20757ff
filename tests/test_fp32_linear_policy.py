"""The per-host choice of kernel for float32 linears in CPU inference and training: either way the model's numbers
stay those of torch's plain ops, and "auto" runs its probe. Float32 CPU training through oneDNN
(`onednn.differentiable_linear`): its forward and all three backward GEMMs stay within float32 rounding of a float64
computation, as close as torch's own float32 ops on the same input, and the path runs only where the probe (or
`AST_HF_FP32_LINEAR`) chose oneDNN."""

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


@pytest.mark.parametrize("shape, width, out_features, has_bias, strided, trainable", CASES)
def test_gradients_are_as_close_to_float64_as_torchs_own(choose, shape, width, out_features, has_bias, strided,
                                                         trainable):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape[:-1], width * (2 if strided else 1), generator=generator)
    x = (x[..., ::2] if strided else x).requires_grad_()
    weight = torch.randn(out_features, width, generator=generator).requires_grad_(trainable)
    bias = torch.randn(out_features, generator=generator).requires_grad_() if has_bias else None
    upstream = torch.randn(*shape[:-1], out_features, generator=generator)
    want = _gradients(*(None if t is None else t.double() for t in (x, weight, bias, upstream)), linear=F.linear)
    torch_error = _max_error(_gradients(x, weight, bias, upstream, F.linear), want)
    choose("onednn")
    assert onednn.float32_training(x, weight)
    calls = []
    real = onednn._Float32Linear.apply
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onednn._Float32Linear, "apply", lambda *a: calls.append(1) or real(*a))
        got = _gradients(x, weight, bias, upstream, onednn.differentiable_linear)
    assert calls  # oneDNN's path really ran
    assert (got[2] is None) == (not trainable)
    # within a few float32 roundings of the float64 result, as torch's own float32 GEMMs are on this input
    assert _max_error(got, want) <= 4 * torch_error + 1e-6, (_max_error(got, want), torch_error)


def test_torchs_op_where_the_probe_chose_blas_or_outside_float32_training(choose):
    x, weight = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    choose("blas")
    assert not onednn.float32_training(x, weight)
    choose("onednn")
    assert onednn.float32_training(x, weight)
    with torch.no_grad():
        assert not onednn.float32_training(x, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.float32_training(x, weight)  # autocast casts as torch's F.linear does
    assert not onednn.float32_training(x.double(), weight.double())
    assert not onednn.float32_training(x[:0], weight)  # no rows: nothing for oneDNN to build


def test_a_training_step_gives_the_gradients_of_torchs_ops(choose):
    """The whole model: every parameter's gradient through oneDNN as close to a float64 step as torch's float32."""
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
    choose("blas")
    plain = grads(model, x)
    choose("onednn")
    ours = grads(model, x)
    for name, grad in want.items():
        torch_error = (plain[name].double() - grad).abs().max().item()
        error = (ours[name].double() - grad).abs().max().item()
        assert error <= 4 * torch_error + 1e-6, (name, error, torch_error)
