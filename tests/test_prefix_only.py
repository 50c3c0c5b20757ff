"""The classifier's last layer computes only the prefix tokens (`ASTModel(prefix_only=True)`): the same logits and
gradients as the full last layer. Tolerances come from a float64 run of the same weights: the prefix-only float32
path may be at most as far from it as the full float32 path is (x 2, plus a floor of a few float32 spacings)."""

from __future__ import annotations

import pytest
import torch

from ast_hf import ASTForAudioClassification, ASTModel
from helpers import tiny_config

pytestmark = pytest.mark.numeric


def full_logits(model: ASTForAudioClassification, x: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """The classifier's logits with every token through every layer (the computation transformers' AST does)."""
    pooled = model.audio_spectrogram_transformer(x, attention_mask=attention_mask).pooler_output
    return model.classifier(pooled)


def model_and_input(seed: int = 0, **config):
    torch.manual_seed(seed)
    model = ASTForAudioClassification(tiny_config(**config)).eval()
    x = torch.randn(3, model.config.max_length, model.config.num_mel_bins)
    return model, x


def assert_as_close_as_the_full_path(model, x, attention_mask=None):
    with torch.inference_mode():
        ours = model(x, attention_mask=attention_mask).logits
        full = full_logits(model, x, attention_mask)
        exact = full_logits(model.double(), x.double(), attention_mask)
        model.float()
    full_error = (full.double() - exact).abs().max().item()
    ours_error = (ours.double() - exact).abs().max().item()
    floor = 4 * torch.finfo(torch.float32).eps * exact.abs().max().item()
    assert ours_error <= 2 * full_error + floor, (ours_error, full_error)
    assert not torch.equal(ours, torch.zeros_like(ours))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("prefix", [1, 2])
def test_logits_match_the_full_last_layer(attn, prefix):
    model, x = model_and_input(num_prefix_tokens=prefix)
    model.config._attn_implementation = attn
    assert_as_close_as_the_full_path(model, x)


def test_padded_batch_and_one_clip_per_call(monkeypatch):
    from ast_hf import onednn

    model, x = model_and_input()
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    mask[1, 70:] = 0
    mask[2, 20:] = 0
    assert_as_close_as_the_full_path(model, x, mask)
    monkeypatch.setattr(onednn, "CPU_TOKENS_PER_CALL", 1)  # the encoder's clip-by-clip loop
    assert_as_close_as_the_full_path(model, x, mask)


def test_with_token_reduction():
    model, x = model_and_input(num_hidden_layers=3)
    model.set_token_reduction(keep=0.5, after_layer=1)
    assert_as_close_as_the_full_path(model, x)
    model.set_token_reduction(keep=0.5, after_layer=2)  # dropped right before the (prefix-only) last layer
    assert_as_close_as_the_full_path(model, x)


def test_zero_layers():
    model, x = model_and_input(num_hidden_layers=0)
    assert_as_close_as_the_full_path(model, x)


def test_the_last_layer_does_less_work():
    """The last layer's MLP sees only the prefix tokens: the saving is real, not the same work relabelled."""
    model, x = model_and_input()
    seen = []
    model.audio_spectrogram_transformer.encoder.layer[-1].intermediate.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[1]))
    with torch.inference_mode():
        model(x)
    assert seen == [model.config.num_prefix_tokens]
    seen.clear()
    with torch.inference_mode():
        model(x, output_hidden_states=True)  # every layer's every token asked for: the full last layer
    f, t = model.config.patch_grid()
    assert seen == [f * t + model.config.num_prefix_tokens]


def test_gradients_match_the_full_last_layer():
    """Training takes the prefix-only path too: its gradients are those of the full computation (float64, no
    dropout: the two differ only by rounding)."""
    model, x = model_and_input()
    model = model.double().train()
    x = x.double()
    labels = torch.tensor([0, 3, 1])
    # float64 throughout (the model's own loss computes in float32)
    torch.nn.functional.cross_entropy(model(x).logits, labels).backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    torch.nn.functional.cross_entropy(full_logits(model, x), labels).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_prefix_only_needs_cls_pooling_and_no_per_token_outputs():
    torch.manual_seed(0)
    model = ASTModel(tiny_config(pooling="mean")).eval()
    x = torch.randn(1, 128, 128)
    with pytest.raises(ValueError, match="prefix_only needs pooling='cls'"):
        model(x, prefix_only=True)
    model = ASTModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="cannot come with output_attentions or output_hidden_states"):
        model(x, prefix_only=True, output_attentions=True)
    with torch.inference_mode():
        out = model(x, prefix_only=True)
        full = model(x)
    assert out.last_hidden_state.shape == (1, 2, 64)
    torch.testing.assert_close(out.pooler_output, full.pooler_output, rtol=1e-4, atol=1e-5)


def test_frame_head_and_mean_pooling_keep_every_token():
    """Heads that read the patch tokens get them all (the classifier chooses the full last layer)."""
    for config in (dict(frame_head=True), dict(pooling="mean")):
        model, x = model_and_input(**config)
        with torch.inference_mode():
            out = model(x)
            backbone = model.audio_spectrogram_transformer(x)
            torch.testing.assert_close(out.logits, model.classifier(backbone.pooler_output), rtol=0, atol=0)
