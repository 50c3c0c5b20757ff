"""Patchout (PaSST): patches left out of training batches; off and in eval mode the model is unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification
from ast_hf.modeling_ast import Patchout
from ast_hf.training import ASTAudioCollator, ASTTrainer, ASTTrainingArguments
from helpers import tiny_config

pytestmark = pytest.mark.numeric

FRAMES = 128  # patch grid 12 x 12


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ASTForAudioClassification(tiny_config(max_length=FRAMES)).train()


def _logits_and_gradients(model, x, labels, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(x, labels=labels, **kwargs)
    out.loss.backward()
    return out.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_off_is_bit_identical_logits_and_gradients(model):
    x, labels = torch.randn(3, FRAMES, 128), torch.tensor([0, 3, 1])
    untouched = copy.deepcopy(model)
    model.set_patchout(time=3, freq=2, random=0.5)
    model.set_patchout(0, 0, 0.0)
    want_logits, want_grads = _logits_and_gradients(untouched, x, labels)
    logits, grads = _logits_and_gradients(model, x, labels)
    assert torch.equal(logits, want_logits)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        assert torch.equal(grads[name], want_grads[name]), name


def test_eval_mode_never_drops_patches(model):
    x = torch.randn(2, FRAMES, 128)
    with torch.no_grad():
        want = model.eval()(x).logits
        model.set_patchout(time=4, freq=3, random=0.3)
        assert torch.equal(model(x).logits, want)


@pytest.mark.parametrize("time, freq, random, kept", [(3, 0, 0.0, 12 * 9), (0, 2, 0.0, 10 * 12),
                                                      (2, 4, 0.0, 8 * 10), (0, 0, 0.25, 144 - 36),
                                                      (1, 1, 0.5, 121 - 60), (50, 50, 0.0, 1)])
def test_kept_patches_carry_their_own_position_embeddings(model, time, freq, random, kept):
    embeddings = model.audio_spectrogram_transformer.embeddings
    x = torch.randn(2, FRAMES, 128)
    full, _ = embeddings.eval()(x)
    embeddings.train().patchout = Patchout(time, freq, random)
    torch.manual_seed(7)
    dropped, mask = embeddings(x)
    torch.manual_seed(7)
    index = embeddings.patchout.kept_patches((12, 12), x.device)
    assert mask is None and index.numel() == kept and dropped.shape == (2, 2 + kept, 64)
    assert torch.equal(dropped[:, :2], full[:, :2])  # the prefix tokens are always kept
    assert torch.equal(dropped[:, 2:], full[:, 2 + index])
    if not random:  # whole columns and rows: every kept row keeps the same columns
        columns = (index % 12).reshape(12 - min(freq, 11), -1)
        assert (columns == columns[:1]).all()


def test_variable_length_batch_trains_and_its_mask_is_cut_alike(model):
    x = torch.randn(2, FRAMES, 128)
    attention_mask = torch.ones(2, FRAMES, dtype=torch.long)
    attention_mask[1, 60:] = 0
    x[1, 60:] = 0
    embeddings = model.audio_spectrogram_transformer.embeddings
    full, full_mask = embeddings.eval()(x, attention_mask.sum(1))
    model.train().set_patchout(time=2, freq=1, random=0.2)
    torch.manual_seed(1)
    dropped, mask = embeddings(x, attention_mask.sum(1))
    torch.manual_seed(1)
    index = torch.cat([torch.arange(2), embeddings.patchout.kept_patches((12, 12), x.device, True) + 2])
    assert torch.equal(mask, full_mask[:, index]) and torch.equal(dropped, full[:, index])
    assert not mask[1].all()  # the short clip's padding is still masked

    # the long clip's result does not depend on its padded neighbour's length under the same draw
    torch.manual_seed(2)
    out = model(x, attention_mask=attention_mask, labels=torch.tensor([1, 2]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    other_mask = attention_mask.clone()
    other_mask[1, 30:] = 0
    torch.manual_seed(2)
    beside_another = model(x, attention_mask=other_mask).logits
    torch.testing.assert_close(out.logits[:1], beside_another[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fields", [dict(time=-1), dict(freq=1.5), dict(random=1.0), dict(random=-0.1)])
def test_bad_settings_are_refused(fields):
    with pytest.raises(ValueError, match="patchout"):
        Patchout(**fields)


def test_numpy_integer_counts_are_taken_as_ints():
    """Counts read from arrays or configs are often numpy integers: taken as the ints they are (refused as 'not a
    whole number' before), and equal to the same setting given as ints."""
    import numpy as np

    assert Patchout(np.int64(2), np.int32(1), 0.1) == Patchout(2, 1, 0.1)
    assert type(Patchout(np.int64(2)).time) is int


def test_trainer_arguments_reach_the_model(model, tmp_path):
    fe = ASTFeatureExtractor(max_length=FRAMES)
    collator = ASTAudioCollator(fe, num_labels=5)
    args = ASTTrainingArguments(output_dir=str(tmp_path), use_cpu=True, patchout_time=2, patchout_freq=1,
                                patchout_random=0.1, report_to=[])
    ASTTrainer(model=model, args=args, data_collator=collator)
    assert model.audio_spectrogram_transformer.embeddings.patchout == Patchout(2, 1, 0.1)
    ASTTrainer(model=model, args=ASTTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
               data_collator=collator)
    assert not model.audio_spectrogram_transformer.embeddings.patchout.active


def test_a_frame_head_is_not_trained_with_patchout(tmp_path):
    model = ASTForAudioClassification(tiny_config(max_length=FRAMES, frame_head=True))
    collator = ASTAudioCollator(ASTFeatureExtractor(max_length=FRAMES), num_labels=5)
    args = ASTTrainingArguments(output_dir=str(tmp_path), use_cpu=True, patchout_time=2, report_to=[])
    with pytest.raises(ValueError, match="frame head scores every time column"):
        ASTTrainer(model=model, args=args, data_collator=collator)


def test_every_clip_of_a_padded_batch_keeps_a_real_patch():
    """A clip of one patch column beside a full one, mean pooling, nearly every patch dropped: no empty clip."""
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(max_length=FRAMES, pooling="mean")).train()
    model.set_patchout(time=11, freq=11, random=0.9)
    x = torch.randn(2, FRAMES, 128)
    attention_mask = torch.ones(2, FRAMES, dtype=torch.long)
    attention_mask[1, 16:] = 0  # 16 frames: one patch column
    for seed in range(20):
        torch.manual_seed(seed)
        out = model(x, attention_mask=attention_mask, labels=torch.tensor([0, 1]))
        assert torch.isfinite(out.logits).all(), seed
