"""The per-host, per-shape choice of float32 attention in CPU inference (`onednn.float32_attention`): per-head
oneDNN matmuls (`onednn.attention_per_head`) stay as close to a float64 computation as torch's fused kernel on the
same input, the model's logits stay transformers', and the path runs only in inference where it was chosen."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

from ast_hf import ASTForAudioClassification, onednn
from helpers import kernel_setting, tiny_config

pytestmark = [pytest.mark.numeric,
              pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0: attention is torch's own")]


@pytest.fixture
def choose(monkeypatch):
    """Force `AST_HF_FP32_ATTENTION` to a value; the cached choices are forgotten before and after."""
    with kernel_setting(monkeypatch, "AST_HF_FP32_ATTENTION", onednn.float32_attention) as force:
        yield force


def _heads(batch: int, rows: int, heads: int, head_dim: int, generator) -> torch.Tensor:
    """[batch, heads, rows, head_dim] as the model makes it: a head view of a [batch, rows, heads, head_dim]
    projection (not contiguous)."""
    return torch.randn(batch, rows, heads, head_dim, generator=generator).transpose(1, 2)


@pytest.mark.parametrize("queries, block_bytes", [(40, 1 << 22), (40, 7 * 40 * 4), (2, 1 << 22), (33, 1000)])
def test_per_head_float32_attention_is_as_accurate_as_the_fused_kernel(monkeypatch, queries, block_bytes):
    """Against float64: all queries or the first 2 (the prefix-only last layer), one block or several of unequal
    size, a key mask: no worse than 4x the fused kernel's own float32 error on the same input (+1e-7)."""
    monkeypatch.setattr(onednn, "ATTENTION_BLOCK_BYTES", block_bytes)
    g = torch.Generator().manual_seed(0)
    q, k, v = _heads(2, queries, 3, 16, g) * 3, _heads(2, 40, 3, 16, g) * 3, _heads(2, 40, 3, 16, g)
    key_mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    key_mask[1, ..., 25:] = False

    def flat(context):
        return context.transpose(1, 2).reshape(2, queries, 48)

    want = flat(F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=key_mask))
    fused_error = (flat(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)) - want).abs().max().item()
    got = onednn.attention_per_head(q, k, v, key_mask)
    assert got.dtype == torch.float32 and got.shape == (2, queries, 48)
    assert (got - want).abs().max().item() <= 4 * fused_error + 1e-7


@pytest.mark.parametrize("attention_mask", [False, True])
@torch.no_grad()
def test_the_per_head_model_gives_transformers_logits(choose, tmp_path, attention_mask):
    """Forced per-head attention in every layer (the last layer's 2 queries included), padded clips or not:
    logits within 1e-4 of transformers' AST with the same weights, and within float32 rounding of ours fused."""
    torch.manual_seed(0)
    ours = ASTForAudioClassification(tiny_config(max_length=256)).eval()
    ours.save_pretrained(tmp_path)
    theirs = transformers.ASTForAudioClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    x = torch.randn(3, 256, 128)
    kwargs = {}
    if attention_mask:
        mask = torch.ones(3, 256, dtype=torch.long)
        mask[1, 100:] = 0
        kwargs["attention_mask"] = mask
    choose("fused")
    fused = ours(x, **kwargs).logits
    choose("per_head")
    calls = []
    real = onednn.attention_per_head
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onednn, "attention_per_head", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
        got = ours(x, **kwargs).logits
    assert len(calls) == ours.config.num_hidden_layers and calls[-1][2] == 2  # every layer; the last: the prefix
    torch.testing.assert_close(got, fused, rtol=0, atol=1e-5)
    if not attention_mask:  # transformers' AST has no attention mask
        torch.testing.assert_close(got, theirs(x).logits, rtol=0, atol=1e-4)


def test_training_and_attention_weights_never_take_it(choose, monkeypatch):
    choose("per_head")
    calls = []
    real = onednn.attention_per_head
    monkeypatch.setattr(onednn, "attention_per_head", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(max_length=256))
    x = torch.randn(2, 256, 128)
    model.train()(x, labels=torch.tensor([0, 1])).loss.backward()
    with torch.no_grad():
        out = model.eval()(x, output_attentions=True)
    f, t = model.config.patch_grid()
    assert not calls and out.attentions[0].shape == (2, 4, 2 + f * t, 2 + f * t)
    with torch.no_grad():
        model(x)
    assert calls  # the same model in plain inference does


def test_short_sequences_take_the_fused_kernel_without_measuring(choose, monkeypatch):
    choose("auto")
    monkeypatch.setattr(onednn, "_measure_float32_attention", lambda *a, **k: pytest.fail("measured"))
    assert onednn.float32_attention(4, 62, 62, 32) == "fused"
    assert onednn.float32_attention(12, 2, onednn.FP32_ATTENTION_MIN_TOKENS - 1, 64) == "fused"


def test_auto_measures_long_sequences_and_keeps_the_faster(choose, monkeypatch):
    """The decision follows the measurement and its margin (timings given, so that the rule is what is tested);
    then a real measurement answers one of the two."""
    choose("auto")
    shape = (2, onednn.FP32_ATTENTION_MIN_TOKENS, onednn.FP32_ATTENTION_MIN_TOKENS, 64)
    for fused, per_head, want in ((1.0, 0.5, "per_head"), (1.0, 0.95, "fused"), (1.0, 2.0, "fused")):
        monkeypatch.setattr(onednn, "_measure_float32_attention",
                            lambda *a, f=fused, p=per_head, **k: {"fused": f, "per_head": p})
        onednn.float32_attention.cache_clear()
        assert onednn.float32_attention(*shape) == want
    monkeypatch.undo()
    choose("auto")
    seconds = onednn._measure_float32_attention(*shape, repeats=1)
    assert set(seconds) == {"fused", "per_head"} and all(0 < s < 60 for s in seconds.values())
    assert onednn.float32_attention(*shape) in ("fused", "per_head")


def test_a_bad_setting_is_refused(choose):
    choose("fast")
    with pytest.raises(ValueError, match="AST_HF_FP32_ATTENTION='fast': use one of auto, fused, per_head"):
        onednn.float32_attention(12, 1214, 1214, 64)
