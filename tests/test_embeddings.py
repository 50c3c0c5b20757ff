"""Embeddings: pooled output of hand-cut windows through the backbone, the [frequency, time] layout of the patch
grid against a convolution computed here, and ASTModel vs ASTForAudioClassification."""

import numpy as np
import torch
import torch.nn.functional as F

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, ASTModel, embed
from helpers import RATE, recording, tiny_config

ATOL = 1e-5


def test_window_embeddings_are_the_backbone_pooled_output_of_each_window():
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(time_stride=12)).eval()
    fe = ASTFeatureExtractor(max_length=128)
    wave = recording()[0][: int(5.5 * RATE)]
    result = embed(model, fe, wave, sampling_rate=RATE, window=2.0, hop=1.5, return_patches=True, batch_size=2)
    n, step = 2 * RATE, int(1.5 * RATE)
    starts = [0, step, 2 * step, len(wave) - n]
    np.testing.assert_allclose(result.starts, np.array(starts) / RATE)
    f, t = model.config.patch_grid(fe.frames_for(n))
    assert result.patches.shape == (4, f, t, 64) and result.window_embeddings.shape == (4, 64)
    backbone = model.audio_spectrogram_transformer
    with torch.no_grad():
        for i, s in enumerate(starts):
            x = fe(wave[s:s + n], sampling_rate=RATE, return_tensors="pt", padding="longest")["input_values"]
            out = backbone(x)
            np.testing.assert_allclose(result.window_embeddings[i], out.pooler_output[0].numpy(), atol=ATOL)
            np.testing.assert_allclose(result.patches[i].reshape(f * t, -1), out.last_hidden_state[0, 2:].numpy(),
                                       atol=ATOL)
    np.testing.assert_allclose(result.embedding, result.window_embeddings.mean(0), atol=1e-6)
    # The bare backbone gives the same vectors.
    alone = ASTModel(model.config)
    alone.load_state_dict(backbone.state_dict())
    again = embed(alone.eval(), fe, wave, sampling_rate=RATE, window=2.0, hop=1.5)
    np.testing.assert_allclose(again.window_embeddings, result.window_embeddings, atol=ATOL)


def test_patch_grid_is_frequency_by_time():
    """With no transformer block the tokens are LayerNorm(conv patch + position); compute the convolution here
    on the [mel bins, frames] image and check that grid[fi, ti] is the patch at mel row fi, time column ti."""
    torch.manual_seed(0)
    model = ASTModel(tiny_config(num_hidden_layers=0, frequency_stride=10, time_stride=12)).eval()
    fe = ASTFeatureExtractor(max_length=128)
    wave = recording()[0][RATE * 3: RATE * 5]
    result = embed(model, fe, wave, sampling_rate=RATE, window=2.0, return_patches=True)  # one window
    x = fe(wave, sampling_rate=RATE, return_tensors="pt", padding="longest")["input_values"]  # [1, frames, mel]
    image = x[0].T[None, None]  # [1, 1, mel bins, frames]
    conv = model.embeddings.patch_embeddings.projection
    patches = F.conv2d(image, conv.weight, conv.bias, stride=(10, 12))[0]  # [D, f, t]
    f, t = patches.shape[1:]
    assert result.patches.shape[1:3] == (f, t) and f != t
    position = model.embeddings.position_embeddings_for((f, t))[0, 2:].reshape(f, t, -1)
    expected = model.layernorm(patches.permute(1, 2, 0) + position)
    np.testing.assert_allclose(result.patches[0], expected.detach().numpy(), atol=ATOL)


def test_embed_files_takes_path_objects_and_a_single_path(tmp_path):
    """Path objects made `paths` an object array, pickled into the .npz (which np.load then refuses without
    allow_pickle, though the file is said to hold no pickles); one str was taken as its characters."""
    import soundfile as sf

    from ast_hf.embeddings import embed_files

    torch.manual_seed(0)
    model = ASTModel(tiny_config()).eval()
    fe = ASTFeatureExtractor(max_length=128)
    clip = tmp_path / "clip.wav"
    sf.write(clip, recording()[0][: 2 * RATE], RATE)
    assert embed_files([clip], model, fe, tmp_path / "a.npz", progress=False) == {}
    assert embed_files(str(clip), model, fe, tmp_path / "b.npz", progress=False) == {}
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:  # allow_pickle=False
        assert a["paths"].tolist() == b["paths"].tolist() == [str(clip)]
        np.testing.assert_array_equal(a["embeddings"], b["embeddings"])
        np.testing.assert_allclose(a["embeddings"][0], embed(model, fe, clip).embedding, atol=ATOL)
