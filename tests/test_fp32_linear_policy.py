"""The per-host choice of kernel for float32 linears in CPU inference: either way the model's numbers stay those
of torch's plain ops, and "auto" runs its probe."""

from __future__ import annotations

import pytest
import torch

from ast_hf import ASTForAudioClassification, onednn
from helpers import tiny_config

pytestmark = [pytest.mark.numeric,
              pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0: float32 linears are torch's own")]


@pytest.fixture
def choose(monkeypatch):
    """Force `AST_HF_FP32_LINEAR` to a value; the cached choice is forgotten before and after."""
    def force(value: str) -> str:
        monkeypatch.setenv("AST_HF_FP32_LINEAR", value)
        onednn.float32_linear.cache_clear()
        return onednn.float32_linear()

    yield force
    onednn.float32_linear.cache_clear()


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
