"""Position-embedding adaptation against the authors' code (`adapt_512.pt`, `adapt_1500.pt`: a 12 x 101 grid
learned for 1024 frames, adapted by the original `audioset_pretrain=True` path to 512 frames (centre cut) and
1500 frames (bilinear)), directly and through `from_pretrained(path, max_length=N)`."""

from __future__ import annotations

import pytest
import torch

from ast_hf import ASTConfig, ASTForAudioClassification, adapt_position_embeddings

pytestmark = pytest.mark.numeric

SOURCE_GRID = (12, 101)  # 128 mel bins x 1024 frames, strides 10/10
CASES = {512: (12, 50), 1500: (12, 149)}


@pytest.fixture(scope="module")
def adapted(fixtures_dir):
    return {frames: torch.load(fixtures_dir / f"adapt_{frames}.pt", weights_only=True) for frames in CASES}


@pytest.fixture(scope="module")
def base_folder(adapted, tmp_path_factory):
    """A saved 768-wide model (1 block) whose position embeddings are the fixture's 1024-frame ones."""
    config = ASTConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=64,
                       max_length=1024, num_labels=10, layer_norm_eps=1e-6, classifier_layer_norm_eps=1e-5)
    torch.manual_seed(0)
    model = ASTForAudioClassification(config).eval()
    base = adapted[512]["base_pos_embed"]
    assert torch.equal(base, adapted[1500]["base_pos_embed"])
    with torch.no_grad():
        model.audio_spectrogram_transformer.embeddings.position_embeddings.copy_(base)
    folder = tmp_path_factory.mktemp("base") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("frames", CASES)
def test_adaptation_matches_original_code(adapted, frames):
    fixture = adapted[frames]
    assert fixture["config"]["t_dim"] == CASES[frames][1]
    ours = adapt_position_embeddings(fixture["base_pos_embed"], SOURCE_GRID, CASES[frames])
    assert ours.shape == fixture["pos_embed"].shape
    if frames < 1024:  # a centre cut copies values: exact
        assert torch.equal(ours, fixture["pos_embed"])
    else:  # bilinear resize: float32 rounding only
        assert (ours - fixture["pos_embed"]).abs().max() <= 1e-6
    assert torch.equal(ours[:, :2], fixture["base_pos_embed"][:, :2])  # the two token positions stay


@pytest.mark.parametrize("frames", CASES)
def test_from_pretrained_max_length_adapts_not_reinitialises(base_folder, adapted, frames):
    fixture = adapted[frames]
    model = ASTForAudioClassification.from_pretrained(base_folder, max_length=frames)
    embeddings = model.audio_spectrogram_transformer.embeddings
    assert model.config.max_length == frames and model.config.patch_grid() == CASES[frames]
    assert (embeddings.position_embeddings.detach() - fixture["pos_embed"]).abs().max() <= 1e-6
    plain = ASTForAudioClassification.from_pretrained(base_folder)
    assert torch.equal(plain.audio_spectrogram_transformer.embeddings.position_embeddings.detach(),
                       fixture["base_pos_embed"])
    assert torch.equal(embeddings.cls_token, plain.audio_spectrogram_transformer.embeddings.cls_token)
    # the adapted model computes what the 1024-frame model computes on the fly for inputs of this length
    x = 0.5 * torch.randn(1, frames, 128, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        assert (model(x).logits - plain(x).logits).abs().max() <= 1e-5


def test_resized_model_saves_and_reloads(base_folder, adapted, tmp_path):
    model = ASTForAudioClassification.from_pretrained(base_folder)
    model.resize_max_length(512)
    model.save_pretrained(tmp_path / "resized")
    reloaded = ASTForAudioClassification.from_pretrained(tmp_path / "resized")
    assert reloaded.config.max_length == 512
    assert torch.equal(reloaded.audio_spectrogram_transformer.embeddings.position_embeddings.detach(),
                       adapted[512]["pos_embed"])


def test_sizes_of_any_whole_number_type_are_taken_and_others_refused(base_folder, adapted, tmp_path):
    """`max_length` and the strides as ASTConfig takes them: a whole float (`5.12 * 100`, which torch refused as an
    interpolation size) or a numpy integer (which left a config that save_pretrained could not write) is that int; a
    bool (taken as a stride of 1 before, and then refused by save_pretrained) or a fraction is refused by name."""
    import numpy as np

    model = ASTForAudioClassification.from_pretrained(base_folder, max_length=5.12 * 100)
    assert type(model.config.max_length) is int and model.config.max_length == 512
    assert torch.equal(model.audio_spectrogram_transformer.embeddings.position_embeddings.detach(),
                       adapted[512]["pos_embed"])
    model.adapt_patch_grid(max_length=np.int64(1500), time_stride=np.float32(10.0))
    assert (type(model.config.max_length), type(model.config.time_stride)) == (int, int)
    model.save_pretrained(tmp_path / "saved")
    assert ASTConfig.from_pretrained(tmp_path / "saved").patch_grid() == CASES[1500]
    for name, value in (("time_stride", True), ("frequency_stride", 9.5), ("max_length", "512")):
        with pytest.raises(ValueError, match=f"{name} must be a whole number, got {value!r}"):
            model.adapt_patch_grid(**{name: value})
    assert model.config.patch_grid() == CASES[1500]  # nothing changed
