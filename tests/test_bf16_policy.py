"""The per-host bf16 policy: both matmul branches and every attention branch stay within bf16 rounding of float32."""

from __future__ import annotations

import pytest
import torch

from ast_hf import ASTForAudioClassification, onednn
from helpers import kernel_setting, tiny_config

pytestmark = [pytest.mark.numeric,
              pytest.mark.skipif(not onednn.BF16_UNITS, reason="no bf16 units: bf16 models stay on torch's ops")]

BF16_LOGIT_TOLERANCE = 3e-2  # the forward benchmark's bf16 models sit 2-3e-2 from float32


@pytest.fixture
def policy(monkeypatch):
    """Force `AST_HF_BF16_MATMUL` to a value and return the policy; the cached policy is forgotten before and
    after."""
    with kernel_setting(monkeypatch, "AST_HF_BF16_MATMUL", onednn.bf16_policy, read=True) as force:
        yield force


@pytest.fixture
def models():
    torch.manual_seed(0)
    full = ASTForAudioClassification(tiny_config(max_length=256)).eval()
    half = ASTForAudioClassification(tiny_config(max_length=256)).eval()
    half.load_state_dict(full.state_dict())
    return full, half.bfloat16()


@pytest.mark.parametrize("matmul", ["bf16", "fp32"])
@pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0 leaves bf16 models to torch's ops: no policy")
def test_forced_branch_runs_and_stays_within_bf16_tolerance(policy, models, matmul):
    full, half = models
    chosen = policy(matmul)
    assert chosen.matmul == matmul and chosen.attention in (("fused", "per_head") if matmul == "bf16" else ("fp32",))
    x = torch.randn(3, 256, 128)
    with torch.no_grad():
        want = full(x).logits
        got = half(x).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0, atol=BF16_LOGIT_TOLERANCE)
    encoder = half.audio_spectrogram_transformer.encoder
    twin = encoder.__dict__.get("_float32_twin")
    # fp32 branch: the encoder ran as its float32 twin; bf16 branch: in bf16, with no twin made
    if matmul == "fp32":
        assert twin is not None and all(p.dtype == torch.float32 for p in twin[1].parameters())
    else:
        assert twin is None


@pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0 leaves bf16 models to torch's ops: no policy")
def test_float32_twin_follows_the_weights(policy, models):
    """The fp32 branch's float32 encoder is the bf16 model's weights upcast: after new weights are loaded, the
    output is that of the new weights (the float32 model rounded), never of a stale copy."""
    full, half = models
    policy("fp32")
    x = torch.randn(2, 256, 128)
    with torch.no_grad():
        half(x)
        torch.manual_seed(5)
        other = ASTForAudioClassification(tiny_config(max_length=256)).eval()
        half.load_state_dict(other.state_dict())
        got, want = half(x).logits, other.bfloat16().float()(x).logits
    torch.testing.assert_close(got.float(), want, rtol=0, atol=BF16_LOGIT_TOLERANCE)
    with torch.no_grad():
        assert not torch.allclose(half(x).logits.float(), full(x).logits, atol=BF16_LOGIT_TOLERANCE)


@pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0 leaves bf16 models to torch's ops: no policy")
def test_forward_hooks_on_the_layers_fire_on_the_fp32_branch(policy, models):
    """A forward hook on an encoder layer (activations read out, an ablation) sees that layer's bf16 output on every
    host: on the fp32 branch the encoder ran its float32 twin, whose copied layers never called a hook registered
    after the first forward (and called one registered before with the twin's module and float32 values)."""
    full, half = models
    policy("fp32")
    x = torch.randn(2, 256, 128)
    layer = half.audio_spectrogram_transformer.encoder.layer[0]
    seen = []
    with torch.no_grad():
        half(x)  # the twin is made here
        reference = half(x, output_hidden_states=True)  # hidden states: the bf16 layers themselves
        handle = layer.register_forward_hook(lambda module, args, out: seen.append((module, out[0])))
        hooked = half(x).logits
    handle.remove()
    assert len(seen) == 1 and seen[0][0] is layer and seen[0][1].dtype == torch.bfloat16
    torch.testing.assert_close(seen[0][1], reference.hidden_states[1], rtol=0, atol=0)  # the layer's own output
    torch.testing.assert_close(hooked.float(), full(x).logits, rtol=0, atol=BF16_LOGIT_TOLERANCE)


def test_auto_measures_and_chooses_the_faster_gemm(policy):
    chosen = policy("auto")
    faster = "bf16" if chosen.seconds["gemm bf16"] < chosen.seconds["gemm fp32"] else "fp32"
    assert chosen.matmul == faster
    assert (set(chosen.seconds) > {"attention fused", "attention per head"}) == (faster == "bf16")


@pytest.mark.parametrize("attention", ["fused", "per_head", "fp32"])
def test_every_attention_branch_matches_float32_with_a_key_mask(monkeypatch, attention):
    monkeypatch.setattr(onednn, "bf16_policy", lambda: onednn.BF16Policy("bf16", attention, {}))
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 40, 16) for _ in range(3))
    key_mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    key_mask[1, ..., 25:] = False
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    got = onednn.bf16_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), key_mask)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 40, 48)
    torch.testing.assert_close(got.float(), want.transpose(1, 2).reshape(2, 40, 48), rtol=0, atol=2e-2)


def test_upcast_weights_follow_updates():
    layer = torch.nn.Linear(8, 4).bfloat16()
    first = onednn._float32_copy(layer.weight)
    assert first.dtype == torch.float32 and torch.equal(first, layer.weight.float())
    assert onednn._float32_copy(layer.weight) is first  # made once
    with torch.no_grad():
        layer.weight.add_(1)
    assert torch.equal(onednn._float32_copy(layer.weight), layer.weight.float())


def test_onednn_off_leaves_bf16_models_to_torch(policy, models, monkeypatch):
    policy("fp32")
    monkeypatch.setattr(onednn, "DTYPES", ())  # what AST_HF_ONEDNN=0 sets at import
    with torch.no_grad():
        models[1](torch.randn(1, 256, 128))
    assert not any(hasattr(p, onednn.FLOAT32_COPY_ATTRIBUTE) for p in models[1].parameters())


def test_unknown_setting_is_refused(policy):
    with pytest.raises(ValueError, match="AST_HF_BF16_MATMUL"):
        policy("fast")


@pytest.fixture
def row_split(monkeypatch):
    """Force `AST_HF_BF16_ROW_SPLIT` to a value; the cached choices are forgotten before and after."""
    with kernel_setting(monkeypatch, "AST_HF_BF16_ROW_SPLIT", onednn.bf16_row_split) as force:
        yield force


@pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0 leaves bf16 models to torch's ops")
def test_linears_in_row_halves_run_and_give_the_same_logits(policy, row_split, models, monkeypatch):
    """Forced on, every bf16 linear of the model runs as two oneDNN calls over half its rows each; the logits stay
    those of whole calls within bf16 rounding, and both stay within the bf16 tolerance of the float32 model."""
    full, half = models
    policy("bf16")
    x = torch.randn(3, 256, 128)
    calls, real = [], onednn.linear

    def counted(x, weight, *args, **kwargs):  # the model's linear layers; per-head attention calls `linear` too
        if isinstance(weight, torch.nn.Parameter):
            calls.append(x.shape[:-1].numel())
        return real(x, weight, *args, **kwargs)

    monkeypatch.setattr(onednn, "linear", counted)
    results = {}
    with torch.no_grad():
        want = full(x).logits
        for setting in ("off", "on"):
            row_split(setting)
            calls.clear()
            results[setting] = (half(x).logits.float(), list(calls))
    (whole, whole_calls), (halves, halves_calls) = results["off"], results["on"]
    assert len(halves_calls) == 2 * len(whole_calls) and sum(halves_calls) == sum(whole_calls)
    torch.testing.assert_close(halves, whole, rtol=0, atol=2e-2)
    torch.testing.assert_close(halves, want, rtol=0, atol=BF16_LOGIT_TOLERANCE)


def test_row_split_is_measured_per_shape_and_only_for_large_ones(row_split, monkeypatch):
    row_split("auto")
    timed = []
    real = onednn.best_seconds
    monkeypatch.setattr(onednn, "best_seconds", lambda kernels, repeats: timed.append(set(kernels)) or
                        real(kernels, repeats))
    assert onednn.bf16_row_split(onednn.BF16_ROW_SPLIT_MIN_ROWS - 1, 64, 64) is False
    assert timed == []  # too few rows: not measured
    assert onednn.bf16_row_split(600, 64, 96) in (True, False)
    assert onednn.bf16_row_split(600, 64, 96) in (True, False)
    assert timed == [{"whole", "halves"}]  # measured once for the shape, then remembered
    with pytest.raises(ValueError, match="AST_HF_BF16_ROW_SPLIT"):
        row_split("sometimes")
        onednn.bf16_row_split(600, 64, 96)
