"""The frame head (`config.frame_head`): off it changes nothing, on it gives per-column logits trained with BCE
masked over padded columns, and it survives save / from_pretrained; `frame_level.column_scores` reads it, or the
clip head on frequency-pooled columns, the untrained baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ast_hf import ASTForAudioClassification, ASTModel
from ast_hf.frame_level import column_scores
from ast_hf.modeling_ast import ASTAudioClassificationOutput
from helpers import tiny_config

FRAMES = 128  # patch 16, time stride 10: (128 - 16) // 10 + 1 = 12 columns of 100 ms


def _model(**overrides) -> ASTForAudioClassification:
    torch.manual_seed(0)
    return ASTForAudioClassification(tiny_config(**overrides)).eval()


def test_frame_head_off_is_the_model_of_today(tmp_path):
    import transformers
    from safetensors import safe_open

    default, off = _model(), _model(frame_head=False)
    assert default.state_dict().keys() == off.state_dict().keys()
    for key, value in default.state_dict().items():
        assert torch.equal(off.state_dict()[key], value), key
    # today's weights are exactly those transformers' own AST writes to disk: no extra one
    fields = {k: v for k, v in tiny_config().to_dict().items() if k in transformers.ASTConfig().to_dict()}
    transformers.ASTForAudioClassification(transformers.ASTConfig(**fields)).save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as saved:
        assert set(off.state_dict()) == set(saved.keys())
    x = torch.randn(2, FRAMES, 128)
    out = off(x)
    assert torch.equal(out.logits, default(x).logits)
    assert isinstance(out, ASTAudioClassificationOutput) and out.frame_logits is None
    assert len(off(x, return_dict=False)) == 1  # the tuple form is (logits,) as before


def test_frame_head_adds_only_its_own_weights_and_leaves_the_clip_logits_alone():
    off, on = _model(), _model(frame_head=True)
    extra = set(on.state_dict()) - set(off.state_dict())
    assert extra == {"frame_classifier.layernorm.weight", "frame_classifier.layernorm.bias",
                     "frame_classifier.dense.weight", "frame_classifier.dense.bias"}
    assert set(on.load_state_dict(off.state_dict(), strict=False).missing_keys) == extra
    x = torch.randn(2, FRAMES, 128)
    out = on(x)
    # The same clip logits up to rounding: without a frame head the last layer computes only the prefix tokens
    # (the head reads nothing else), with one it computes every token, in GEMMs of other shapes.
    torch.testing.assert_close(out.logits, off(x).logits, rtol=1e-5, atol=1e-6)
    assert out.frame_logits.shape == (2, 12, 5)


def test_frame_logits_are_the_frequency_mean_of_each_time_column():
    model = _model(frame_head=True)
    x = torch.randn(1, FRAMES, 128)
    tokens = model.audio_spectrogram_transformer(x).last_hidden_state[:, 2:]  # [1, f * t, D], frequency-major
    f, t = model.config.patch_grid(FRAMES)
    expected = model.frame_classifier.dense(model.frame_classifier.layernorm(tokens.reshape(1, f, t, -1).mean(1)))
    torch.testing.assert_close(model(x).frame_logits, expected)


def test_frame_loss_is_bce_over_real_columns_only():
    model = _model(frame_head=True)
    x = torch.randn(2, FRAMES, 128)
    mask = torch.ones(2, FRAMES, dtype=torch.long)
    mask[1, 70:] = 0  # clip 1 has 70 real frames: (70 - 16) // 10 + 1 = 6 real columns
    targets = (torch.rand(2, 12, 5) > 0.7).float()
    out = model(x, attention_mask=mask, frame_targets=targets)
    per_cell = F.binary_cross_entropy_with_logits(out.frame_logits, targets, reduction="none")
    expected = torch.cat([per_cell[0].flatten(), per_cell[1, :6].flatten()]).mean()
    torch.testing.assert_close(out.loss, expected)
    changed = targets.clone()
    changed[1, 6:] = 1 - changed[1, 6:]  # padded columns: no effect
    torch.testing.assert_close(model(x, attention_mask=mask, frame_targets=changed).loss, out.loss)
    changed[1, 5] = 1 - changed[1, 5]  # the last real column counts
    assert not torch.isclose(model(x, attention_mask=mask, frame_targets=changed).loss, out.loss)
    # clip and frame losses add up
    clip = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0]])
    model.config.problem_type = "multi_label_classification"
    both = model(x, attention_mask=mask, labels=clip, frame_targets=targets)
    torch.testing.assert_close(both.loss, out.loss + F.binary_cross_entropy_with_logits(both.logits, clip))


def test_frame_loss_with_non_square_patches_counts_columns_by_the_patch_time_side():
    """SSAST "Frame" patches (128 mel bins x 2 frames): a padded clip's real columns follow from the patch's time
    side (2 frames), not from the whole patch size pair."""
    model = _model(frame_head=True, patch_size=(128, 2), frequency_stride=128, time_stride=2, pooling="mean",
                   num_prefix_tokens=1, max_length=100)
    x = torch.randn(2, 100, 128)
    mask = torch.ones(2, 100, dtype=torch.long)
    mask[1, 60:] = 0  # clip 1 has 60 real frames: (60 - 2) // 2 + 1 = 30 of 50 columns
    targets = (torch.rand(2, 50, 5) > 0.7).float()
    out = model(x, attention_mask=mask, frame_targets=targets)
    per_cell = F.binary_cross_entropy_with_logits(out.frame_logits, targets, reduction="none")
    expected = torch.cat([per_cell[0].flatten(), per_cell[1, :30].flatten()]).mean()
    torch.testing.assert_close(out.loss, expected)
    # a clip of a single patch's 2 real frames has one real column
    mask[1, 2:] = 0
    out = model(x, attention_mask=mask, frame_targets=targets)
    per_cell = F.binary_cross_entropy_with_logits(out.frame_logits, targets, reduction="none")
    torch.testing.assert_close(out.loss, torch.cat([per_cell[0].flatten(), per_cell[1, :1].flatten()]).mean())


def test_frame_loss_trains_the_backbone_and_frame_head_not_the_clip_head():
    model = _model(frame_head=True).train()
    model(torch.randn(2, FRAMES, 128), frame_targets=torch.ones(2, 12, 5)).loss.backward()
    assert model.frame_classifier.dense.weight.grad.abs().sum() > 0
    assert model.audio_spectrogram_transformer.encoder.layer[0].intermediate.dense.weight.grad.abs().sum() > 0
    assert model.classifier.dense.weight.grad is None


def test_wrong_frame_targets_are_refused():
    x = torch.randn(1, FRAMES, 128)
    with pytest.raises(ValueError, match=r"frame_targets have shape \(1, 10, 5\) but the frame head gives \(1, 12"):
        _model(frame_head=True)(x, frame_targets=torch.zeros(1, 10, 5))
    with pytest.raises(ValueError, match="no frame head; build or load it with frame_head=True"):
        _model()(x, frame_targets=torch.zeros(1, 12, 5))


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = _model(frame_head=True)
    model.save_pretrained(tmp_path / "frames")
    loaded = ASTForAudioClassification.from_pretrained(tmp_path / "frames").eval()
    assert loaded.config.frame_head is True
    x = torch.randn(2, FRAMES, 128)
    assert torch.equal(loaded(x).frame_logits, model(x).frame_logits)
    assert torch.equal(loaded(x).logits, model(x).logits)
    # a backbone-only load ignores both heads; a new label count gives both heads fresh weights
    backbone = ASTModel.from_pretrained(tmp_path / "frames")
    assert torch.equal(backbone(x).last_hidden_state, model.audio_spectrogram_transformer(x).last_hidden_state)
    relabelled = ASTForAudioClassification.from_pretrained(tmp_path / "frames", num_labels=3)
    assert relabelled.frame_classifier.dense.weight.shape == (3, 64)
    # a clip classifier gets a fresh frame head on request, its backbone and clip head kept
    _model().save_pretrained(tmp_path / "clips")
    grown = ASTForAudioClassification.from_pretrained(tmp_path / "clips", frame_head=True).eval()
    assert grown.config.frame_head
    torch.testing.assert_close(grown(x).logits, _model()(x).logits, rtol=1e-5, atol=1e-6)  # rounding: see above
    assert grown(x).frame_logits.shape == (2, 12, 5)


def test_column_scores_read_the_frame_head_or_the_clip_head_on_frequency_pooled_tokens():
    model = _model(frame_head=True)
    x = torch.randn(2, FRAMES, 128)
    tokens = model.audio_spectrogram_transformer(x).last_hidden_state[:, 2:]
    f, t = model.config.patch_grid(FRAMES)
    columns = tokens.reshape(2, f, t, -1)
    clip_head = torch.from_numpy(np.stack(column_scores(model, x, activation="none", clip_head=True)))
    torch.testing.assert_close(clip_head, model.classifier(columns.mean(1)).detach())  # pool, then the head
    # ... which is not the head on each token, logits pooled (the head's LayerNorm is not linear).
    assert not torch.allclose(clip_head, model.classifier(columns).mean(1).detach(), atol=1e-3)
    frame_head = torch.from_numpy(np.stack(column_scores(model, x, activation="none")))
    torch.testing.assert_close(frame_head, model(x).frame_logits.detach())
    assert clip_head.shape == frame_head.shape == (2, 12, 5)
