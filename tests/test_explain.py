"""Attention explanations: the weights are the ones computed after the LayerNorm (checked by hand and against
transformers' AST), rollout against a plain loop over transformers' attentions, shapes, rows summing to one,
the patch-grid layout, and the PNG."""

import numpy as np
import pytest
import torch
import transformers

from ast_hf import ASTForAudioClassification, attention_rollout, explain
from ast_hf.explanation import token_to_patch_map
from ast_hf.plotting import patch_map_to_pixels
from helpers import RATE, recording, tiny_config

ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(num_hidden_layers=3, time_stride=12)).eval()
    with torch.no_grad():  # non-trivial LayerNorm affines and peaked attention, so skipping the LayerNorm shows
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.add_(0.3 * torch.randn_like(p))
            if name.endswith(("query.weight", "key.weight")):
                p.mul_(8.0)
    return model


@torch.no_grad()
def test_attention_weights_are_taken_after_the_layernorm(model):
    x = torch.randn(1, 128, 128, generator=torch.Generator().manual_seed(0))
    out = model(x, output_attentions=True, output_hidden_states=True)
    backbone = model.audio_spectrogram_transformer
    heads, dim = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    for layer, hidden, weights in zip(backbone.encoder.layer, out.hidden_states, out.attentions):
        attn = layer.attention.attention

        def by_hand(h):
            q = attn.query(h).view(1, -1, heads, dim).transpose(1, 2)
            k = attn.key(h).view(1, -1, heads, dim).transpose(1, 2)
            return (q @ k.transpose(-1, -2) / dim ** 0.5).softmax(-1)

        torch.testing.assert_close(weights, by_hand(layer.layernorm_before(hidden)), atol=ATOL, rtol=0)
        # What the original repository's get_att_map computes (no LayerNorm) is something else.
        assert (weights - by_hand(hidden)).abs().max() > 0.1


@torch.no_grad()
def test_rollout_matches_a_plain_loop_over_transformers_attentions(model, tmp_path):
    x = torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(1))
    model.save_pretrained(tmp_path)
    theirs = transformers.ASTForAudioClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    their_attn = theirs(x, output_attentions=True).attentions
    ours = model(x, output_attentions=True).attentions
    assert len(ours) == len(their_attn) == 3
    for a, b in zip(ours, their_attn):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    # Rollout by a plain loop (numpy, float64), from transformers' weights.
    tokens = their_attn[0].shape[-1]
    expected = np.stack([np.eye(tokens)] * 2)
    for a in their_attn:
        layer = a.double().numpy().mean(axis=1) * 0.5 + 0.5 * np.eye(tokens)
        layer /= layer.sum(axis=-1, keepdims=True)
        expected = np.einsum("bij,bjk->bik", layer, expected)
    got = attention_rollout(ours)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, atol=1e-12)


def test_patch_map_layout_is_frequency_major():
    f, t = 3, 4
    matrix = torch.zeros(1, 2 + f * t, 2 + f * t, dtype=torch.float64)
    matrix[:, :2, 2 + 1 * t + 2] = 1.0  # cls and distillation look at patch (frequency 1, time 2)
    grid = token_to_patch_map(matrix, (f, t))[0]
    assert grid[1, 2] == 1.0 and grid.sum() == 1.0
    pixels = patch_map_to_pixels(grid.numpy(), num_mel_bins=36, num_frames=48, patch_size=16, frequency_stride=10,
                                 time_stride=10)
    # Patch (1, 2) covers mel bins 10-25 and frames 20-35; pixels shared with neighbours are averaged:
    # (17, 27) lies in that patch only, (12, 22) in patches (0|1, 1|2).
    assert pixels[17, 27] == 1.0 and pixels[12, 22] == pytest.approx(1 / 4)
    assert pixels[5, 5] == 0.0 and np.isnan(pixels[:, 46:]).all() and not np.isnan(pixels[:, :46]).any()


def test_explain_a_clip_and_draw_it(tmp_path, trained):
    model, fe = trained
    wave, _ = recording()
    clip = wave[int(3.4 * RATE):int(4.6 * RATE)]  # speech, then the tone starting at 4 s
    result = explain(model, fe, clip, sampling_rate=RATE)
    f, t = model.config.patch_grid(128)
    assert result.grid == (f, t) and result.rollout.shape == (f, t)
    assert result.layer_maps.shape == (model.config.num_hidden_layers, f, t)
    assert result.rollout_matrix.shape == (2 + f * t, 2 + f * t)
    np.testing.assert_allclose(result.rollout_matrix.sum(-1), 1.0, atol=1e-9)
    assert result.rollout.sum() == pytest.approx(1.0) and (result.rollout >= 0).all()
    np.testing.assert_allclose(result.layer_maps.sum(axis=(1, 2)), 1.0, atol=1e-9)
    assert result.features.shape == (128, 128)
    assert [label for label, _ in result.top] == sorted(["speech", "tone", "noise"],
                                                       key=lambda name: -dict(result.top)[name])
    png = result.plot(tmp_path / "map.png")
    assert png.stat().st_size > 10_000 and open(png, "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="head_fusion"):
        explain(model, fe, clip, sampling_rate=RATE, head_fusion="median")


def test_a_segment_is_explained_and_drawn_in_seconds_of_the_recording(tmp_path, trained):
    """`explain(start=S, duration=D)` explains exactly that segment, and the plot's time axes run from S (as
    `ast-hf explain --start S` shows them), not from 0."""
    from ast_hf.plotting import explanation_figure

    model, fe = trained
    wave, _ = recording()
    segment = explain(model, fe, wave, sampling_rate=RATE, start=3.5, duration=1.0)
    cut = explain(model, fe, wave[int(3.5 * RATE):int(4.5 * RATE)], sampling_rate=RATE)
    np.testing.assert_array_equal(segment.features, cut.features)
    np.testing.assert_allclose(segment.rollout, cut.rollout, atol=1e-12)
    assert segment.start == 3.5 and cut.start == 0.0
    fig = explanation_figure(segment)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 + model.config.num_hidden_layers
    for ax in images:
        assert ax.get_xlim() == pytest.approx((3.5, 3.5 + 1.28)), ax.get_title()
        for image in ax.images:
            assert image.get_extent()[:2] == pytest.approx([3.5, 3.5 + 1.28])
    with pytest.raises(ValueError, match=r"start 20 s is outside the recording \(0 to 12.00 s\)"):
        explain(model, fe, wave, sampling_rate=RATE, start=20)
    with pytest.raises(ValueError, match="duration must be positive"):
        explain(model, fe, wave, sampling_rate=RATE, start=1.0, duration=0)


def test_a_figure_without_layer_maps_is_drawn(model):
    from ast_hf import ASTFeatureExtractor
    from ast_hf.plotting import explanation_figure

    waveform = np.random.default_rng(0).normal(size=RATE).astype(np.float32) * 0.1
    explanation = explain(model, ASTFeatureExtractor(max_length=128), waveform, sampling_rate=RATE)
    assert explanation_figure(explanation, max_layers=0).axes  # rollout and spectrogram only


def test_a_duration_past_the_end_is_the_rest_and_a_too_short_segment_is_named(model):
    """`ast-hf explain --duration inf` passes infinity: like any duration past the end, the rest of the recording
    (round() of it used to raise OverflowError). A segment under one frame is refused in the segment's terms."""
    from ast_hf import ASTFeatureExtractor

    fe = ASTFeatureExtractor(max_length=128)
    waveform = np.random.default_rng(0).normal(size=2 * RATE).astype(np.float32) * 0.1
    rest = explain(model, fe, waveform, sampling_rate=RATE, start=0.5)
    for duration in (float("inf"), 10.0):
        segment = explain(model, fe, waveform, sampling_rate=RATE, start=0.5, duration=duration)
        np.testing.assert_array_equal(segment.features, rest.features)
        assert segment.real_frames == rest.real_frames == fe.frames_for(round(1.5 * RATE))
    with pytest.raises(ValueError, match=r"segment from 1.99 s \(0.0100 s of audio\) is shorter than one 25 ms frame"):
        explain(model, fe, waveform, sampling_rate=RATE, start=1.99)
