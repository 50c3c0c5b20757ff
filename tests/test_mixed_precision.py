"""bf16 autocast on the CPU, as `Trainer(bf16=True)` runs it through `accelerate`: a training step and evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ast_hf import ASTForAudioClassification, autocast_cpu, onednn
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


@pytest.mark.parametrize("attention,autocast_attention", [("sdpa", "fp32"), ("sdpa", "bf16"), ("sdpa", "auto"),
                                                          ("eager", "auto")])
def test_training_step_under_bf16_autocast_matches_float32(model, attention, autocast_attention, monkeypatch):
    monkeypatch.setenv("AST_HF_AUTOCAST_ATTENTION", autocast_attention)
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


@pytest.mark.parametrize("choice,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_attention_under_autocast_training_runs_in_the_chosen_dtype(model, choice, dtype, monkeypatch):
    """The context is exactly torch's fused kernel in the chosen dtype on autocast's bf16 projections."""
    monkeypatch.setenv("AST_HF_AUTOCAST_ATTENTION", choice)
    attention = model.audio_spectrogram_transformer.encoder.layer[0].attention.attention
    x = torch.randn(2, 30, model.config.hidden_size, requires_grad=True)
    batch, tokens, dim = x.shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = attention(x)
        q, k, v = (F.linear(x, layer.weight, layer.bias).view(batch, tokens, attention.num_heads, -1).transpose(1, 2)
                   for layer in (attention.query, attention.key, attention.value))
    assert q.dtype == torch.bfloat16  # autocast's projections
    want = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype)).transpose(1, 2).reshape(batch, tokens,
                                                                                                          dim)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.float().sum().backward()  # differentiable on either branch
    assert torch.isfinite(x.grad).all()


def test_patch_embedding_runs_in_float32_under_autocast_training(model):
    embed = model.audio_spectrogram_transformer.embeddings.patch_embeddings
    x = torch.randn(2, 128, 128)
    want = F.conv2d(x.unsqueeze(1).transpose(2, 3), embed.projection.weight, embed.projection.bias,
                    stride=embed.projection.stride).flatten(2).transpose(1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = embed(x)
        with torch.no_grad():
            inference = embed(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert inference.dtype == torch.bfloat16  # inference under autocast: autocast's own choice, as before


def test_autocast_attention_choice_is_measured_once_per_shape(monkeypatch):
    monkeypatch.delenv("AST_HF_AUTOCAST_ATTENTION", raising=False)
    autocast_cpu.attention_dtype.cache_clear()
    seconds = autocast_cpu.measure_attention((2, 2, 40, 16), repeats=1)
    assert set(seconds) == {"fp32", "bf16"} and all(0 < s < 10 for s in seconds.values())
    first = autocast_cpu.attention_dtype(2, 2, 40, 16)
    assert first in (torch.float32, torch.bfloat16)
    assert autocast_cpu.attention_dtype(3, 2, 40, 16) is first  # kept for the shape, whatever the batch
    monkeypatch.setenv("AST_HF_AUTOCAST_ATTENTION", "bf16")
    assert autocast_cpu.attention_dtype(2, 2, 40, 16) is torch.bfloat16
    monkeypatch.setenv("AST_HF_AUTOCAST_ATTENTION", "fast")
    with pytest.raises(ValueError, match="AST_HF_AUTOCAST_ATTENTION='fast'"):
        autocast_cpu.attention_dtype(2, 2, 40, 16)
    autocast_cpu.attention_dtype.cache_clear()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_first_autocast_step_measures_attention_inside_activation_checkpointing(model, monkeypatch, use_reentrant):
    """The attention choice is measured (a forward + backward of its own) inside the first checkpointed layer's
    forward; the checkpoint must not see the probe's tensors (it raised: 84 tensors saved against 24 recomputed)."""
    monkeypatch.delenv("AST_HF_AUTOCAST_ATTENTION", raising=False)
    autocast_cpu.attention_dtype.cache_clear()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model.train()
    x, labels = torch.randn(2, 128, 128, requires_grad=use_reentrant), torch.tensor([0, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, labels=labels).loss
    loss.backward()
    assert len(autocast_cpu._chosen) == 1  # measured during this step
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    autocast_cpu.attention_dtype.cache_clear()


@pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0: a bf16 model runs torch's own ops, no float32 twin")
def test_bf16_models_float32_twin_follows_train_and_eval_mode(monkeypatch):
    """A bf16 model whose CPU inference runs its float32 twin (`AST_HF_BF16_MATMUL=fp32`): the twin built in train
    mode drops out no more once the model is put in eval mode, and drops out again back in train mode."""
    monkeypatch.setenv("AST_HF_BF16_MATMUL", "fp32")
    onednn.bf16_policy.cache_clear()
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(hidden_dropout_prob=0.5)).bfloat16()
    encoder = model.audio_spectrogram_transformer.encoder
    x = torch.randn(1, 128, 128, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            model.train()
            model(x)  # a no-grad probe in train mode builds the twin
            assert "_float32_twin" in encoder.__dict__
            model.eval()
            first, second = model(x).logits, model(x).logits
            model.train()
            third, fourth = model(x).logits, model(x).logits
    finally:
        onednn.bf16_policy.cache_clear()
    assert torch.equal(first, second)  # eval: no dropout
    assert not torch.equal(third, fourth)  # train: dropout
