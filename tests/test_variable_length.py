"""Inputs of any length, end to end: waveforms of different lengths through the feature extractor
(`padding="longest", return_attention_mask=True`) and the model give, inside a padded batch, the logits each clip
gets alone; in eager and sdpa; for lengths shorter and longer than `max_length`. A clip at a new length matches
transformers' AST built for that length with the adapted position embeddings. The per-length cache of adapted
position embeddings never serves values from before a weight update."""

import numpy as np
import pytest
import torch
import transformers

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification
from helpers import tiny_config

pytestmark = pytest.mark.numeric

ATOL = 1e-4  # fp32 logits
RATE = 16000
# Waveform lengths in samples: 56, 98, 127 (= max_length - 1), 160, 256 frames; max_length = 128 frames.
SECONDS = [0.575, 0.995, 1.285, 1.615, 2.575]


def waveforms(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s in SECONDS:
        t = np.arange(round(s * RATE)) / RATE
        out.append((0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
                    + 0.1 * rng.standard_normal(len(t))).astype(np.float32))
    return out


def make_model(attn_implementation, **overrides):
    torch.manual_seed(0)
    config = tiny_config(frequency_stride=10, time_stride=10, **overrides)
    config._attn_implementation = attn_implementation
    return ASTForAudioClassification(config).eval()


@pytest.fixture(scope="module")
def fe():
    return ASTFeatureExtractor(max_length=128)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@torch.no_grad()
def test_clip_alone_equals_clip_inside_a_padded_batch(fe, attn):
    model = make_model(attn)
    clips = waveforms()
    batch = fe(clips, sampling_rate=RATE, return_tensors="pt", padding="longest", return_attention_mask=True)
    frames = batch["attention_mask"].sum(1).tolist()
    assert frames == [fe.frames_for(len(c)) for c in clips]
    assert min(frames) < model.config.max_length < max(frames)  # shorter and longer than the learned grid
    batched = model(**batch).logits
    for i, clip in enumerate(clips):
        alone = fe(clip, sampling_rate=RATE, return_tensors="pt", padding="longest")
        assert alone["input_values"].shape[1] == frames[i]
        torch.testing.assert_close(batched[i], model(**alone).logits[0], atol=ATOL, rtol=0)
    # Order in the batch does not matter either.
    order = [4, 0, 3, 1, 2]
    shuffled = fe([clips[i] for i in order], sampling_rate=RATE, return_tensors="pt", padding="longest",
                  return_attention_mask=True)
    torch.testing.assert_close(model(**shuffled).logits, batched[order], atol=ATOL, rtol=0)


@torch.no_grad()
def test_eager_and_sdpa_agree_on_padded_batches(fe):
    batch = fe(waveforms(1), sampling_rate=RATE, return_tensors="pt", padding="longest", return_attention_mask=True)
    eager, sdpa = make_model("eager"), make_model("sdpa")
    out_e = eager(**batch, output_hidden_states=True)
    out_s = sdpa(**batch, output_hidden_states=True)
    torch.testing.assert_close(out_e.logits, out_s.logits, atol=ATOL, rtol=0)
    # Padded patch tokens carry nothing: zero in every layer of both.
    mask = batch["attention_mask"]
    short = int(mask.sum(1).argmin())
    f, t = eager.config.patch_grid(mask.shape[1])
    t_real = (int(mask[short].sum()) - 16) // 10 + 1
    padded = torch.zeros(f, t, dtype=torch.bool)
    padded[:, t_real:] = True
    for hidden in out_e.hidden_states[1:] + out_s.hidden_states[1:]:
        tokens = hidden[short, 2:].reshape(f, t, -1)
        assert tokens[padded].abs().max() == 0
        assert tokens[~padded].abs().min() >= 0 and tokens[~padded].abs().sum() > 0


@pytest.mark.parametrize("case", ["left padding", "a hole", "a value of 2"])
@torch.no_grad()
def test_a_mask_that_is_not_right_padding_is_refused_naming_the_clip(fe, case):
    """The model reads a clip's real frames as its first `mask.sum()` frames. A left-padded mask (or one with a hole,
    or with values other than 0 and 1) was accepted and scored the padding in place of the clip's end, without a
    word; it is refused, naming the clip. Right-padded masks of every dtype still run."""
    model = make_model("sdpa")
    batch = fe(waveforms(2), sampling_rate=RATE, return_tensors="pt", padding="longest", return_attention_mask=True)
    mask = batch["attention_mask"]
    short = int(mask.sum(1).argmin())
    real = int(mask[short].sum())
    bad = mask.clone()
    if case == "left padding":
        bad[short] = bad[short].flip(0)
    elif case == "a hole":
        bad[short, real // 2] = 0
    else:
        bad[short, :real] = 2
    with pytest.raises(ValueError, match=rf"attention_mask of clip\(s\) \[{short}\] is not 1 for the real frames "
                                         r"and 0 for the padding after them"):
        model(batch["input_values"], attention_mask=bad)
    expected = model(**batch).logits
    for same in (mask.bool(), mask.float(), mask.numpy()):
        torch.testing.assert_close(model(batch["input_values"], attention_mask=same).logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("frames", [56, 100, 200, 256])
@torch.no_grad()
def test_any_length_matches_transformers_built_for_that_length(frames, tmp_path):
    """Independent oracle: transformers' AST loaded from a copy whose embeddings were adapted to `frames` once
    (`resize_max_length`, checked against the authors' code in test_position_embeddings.py)."""
    model = make_model("eager")
    x = torch.randn(2, frames, 128, generator=torch.Generator().manual_seed(frames))
    static = make_model("eager")
    static.resize_max_length(frames)
    static.save_pretrained(tmp_path)
    oracle = transformers.ASTForAudioClassification.from_pretrained(tmp_path).eval()
    assert type(oracle).__module__.startswith("transformers.") and oracle.config.max_length == frames
    # transformers has one LayerNorm eps for backbone and head (1e-6 vs the head's 1e-5: below the tolerance).
    torch.testing.assert_close(model(x).logits, oracle(x).logits, atol=ATOL, rtol=0)


def test_cached_position_embeddings_follow_weight_updates():
    model = make_model("sdpa")
    embeddings = model.audio_spectrogram_transformer.embeddings
    x = torch.randn(2, 200, 128, generator=torch.Generator().manual_seed(0))

    def check(previous=None):
        with torch.no_grad():
            got = model(x).logits
            if previous is not None:  # the update must matter (a constant shift would vanish in the LayerNorm)
                assert (got - previous).abs().max() > 1e-3
            fresh = ASTForAudioClassification(model.config).eval()
            fresh.load_state_dict(model.state_dict())
            torch.testing.assert_close(got, fresh(x).logits, atol=ATOL, rtol=0)
        return got

    before = check()
    assert embeddings._adapted, "adapted embeddings for 200 frames should be cached under no_grad"
    # 1. An optimizer step (in-place update of the parameter).
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    model(x, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    model.eval()
    after_step = check(before)
    # 2. load_state_dict with other position embeddings.
    state = model.state_dict()
    key = "audio_spectrogram_transformer.embeddings.position_embeddings"
    state[key] = state[key] + torch.randn_like(state[key])
    model.load_state_dict(state)
    after_load = check(after_step)
    # 3. An in-place update under no_grad.
    with torch.no_grad():
        embeddings.position_embeddings.add_(torch.randn_like(embeddings.position_embeddings))
    after_add = check(after_load)
    # 4. Moving the model to another dtype and back.
    model.double().float()
    check()
    assert after_add is not None


def test_cache_follows_updates_written_through_data():
    model = make_model("sdpa")
    x = torch.randn(1, 200, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)  # fills the cache for 200 frames
        before = model(x).logits
        param = model.audio_spectrogram_transformer.embeddings.position_embeddings
        param.data.add_(torch.randn_like(param))  # random: a constant shift would vanish in the LayerNorm
        got = model(x).logits
        assert (got - before).abs().max() > 1e-3
        fresh = ASTForAudioClassification(model.config).eval()
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(got, fresh(x).logits, atol=ATOL, rtol=0)
