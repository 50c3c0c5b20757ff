"""bf16 autocast on the CPU, as `Trainer(bf16=True)` runs it through `accelerate`: a training step and evaluation."""

from __future__ import annotations

import pytest
import torch

from ast_hf import ASTForAudioClassification, onednn
from helpers import tiny_config

pytestmark = [pytest.mark.numeric,
              pytest.mark.skipif(not onednn.BF16_UNITS, reason="this CPU has no bf16 units (oneDNN builds no bf16 "
                                                                  "matmul here): bf16 autocast would be emulated")]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ASTForAudioClassification(tiny_config(max_length=128, num_labels=5))


def _step(model, x, labels, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x, labels=labels)
    out.loss.backward()
    return out, torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_training_step_under_bf16_autocast_matches_float32(model, attention):
    model.config._attn_implementation = attention
    model.train()
    x, labels = torch.randn(4, 128, 128), torch.tensor([0, 1, 2, 4])
    want, want_grad = _step(model, x, labels, autocast=False)
    got, grad = _step(model, x, labels, autocast=True)
    assert got.logits.dtype == torch.bfloat16  # the blocks really ran in bf16
    assert got.loss.dtype == torch.float32  # the loss is computed in float32
    # bf16 keeps 8 bits of mantissa: relative rounding 2^-8 per value, a few roundings deep
    torch.testing.assert_close(got.loss, want.loss, rtol=2e-2, atol=0)
    assert torch.isfinite(grad).all()
    assert torch.nn.functional.cosine_similarity(grad, want_grad, dim=0) > 0.99


def test_evaluation_under_bf16_autocast(model):
    """`Trainer(bf16=True)` evaluates under autocast too; the oneDNN inference paths must step aside there."""
    model.eval()
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        want = model(x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0, atol=2e-2)
