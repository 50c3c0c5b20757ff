"""The HEAR 2021 API: the hear-validator's checks (sample rate, embedding sizes, shapes, dtypes, regular
timestamps ending within two hops of the clip's end), the 50 ms grid interpolating the column embeddings of one
forward per window, and the clear errors."""

import numpy as np
import pytest
import torch

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, hear
from ast_hf.frame_level import column_tokens
from ast_hf.inference import featurize
from helpers import tiny_config


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hear") / "model"
    torch.manual_seed(0)
    ASTForAudioClassification(tiny_config()).save_pretrained(folder)
    ASTFeatureExtractor(max_length=128).save_pretrained(folder)
    return hear.load_model(str(folder))


def test_the_validator_checks_pass(model):
    # check_load_model / check_sample_rate / check_embedding_size
    assert isinstance(model, torch.nn.Module) and model.to("cpu") is model
    assert model.sample_rate in (16000, 22050, 44100, 48000)
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    torch.manual_seed(1)
    for length in (1.07, 1.98, 4.0):  # the validator's lengths, white noise in [-1, 1]
        audio = torch.rand(2, int(length * model.sample_rate)) * 2 - 1
        embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
        assert embeddings.dtype == torch.float32 and embeddings.ndim == 3 and timestamps.ndim == 2
        assert embeddings.shape[0] == 2 and embeddings.shape[:2] == timestamps.shape
        assert embeddings.shape[2] == model.timestamp_embedding_size
        diff = np.diff(timestamps.numpy())
        assert diff.max() <= 50.0 and np.abs(diff - diff.mean()).max() <= 1
        assert timestamps.min() <= diff.mean()
        assert 1000 * length - 2 * diff.mean() <= timestamps.max() <= 1000 * length
    audio = torch.rand(4, int(2.74 * model.sample_rate)) * 2 - 1  # check_scene_embeddings
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (4, model.scene_embedding_size)
    assert torch.isfinite(scene).all() and not torch.allclose(scene[0], scene[1])


def test_timestamp_embeddings_interpolate_the_columns_of_one_forward(model):
    torch.manual_seed(2)
    audio = torch.rand(1, 16000) * 2 - 1  # 1 s: one window of the 1.28 s model
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    values, _ = featurize(model.feature_extractor, [audio[0].numpy()], model.config.max_length)
    columns = column_tokens(model.model, values, frames=[model.feature_extractor.frames_for(16000)])[0]
    centres = np.arange(len(columns)) * 100 + 87.5  # ms: column j covers frames 10 j ... 10 j + 15
    for t, row in zip(timestamps[0].numpy(), embeddings[0].numpy()):
        expected = np.array([np.interp(t, centres, columns[:, d]) for d in range(columns.shape[1])])
        assert np.abs(row - expected).max() <= 1e-5
    # The scene embedding of a short clip is the pooled output of its one window.
    pooled = model.model(values).pooler_output[0]
    assert torch.allclose(hear.get_scene_embeddings(audio, model)[0], pooled, atol=1e-5)
    # A clip shorter than one patch still gets embeddings (zero-padded to one patch).
    short, stamps = hear.get_timestamp_embeddings(audio[:, :1000], model)
    assert short.shape == (1, 2, model.timestamp_embedding_size) and stamps[0].tolist() == [0.0, 50.0]


def test_a_clip_shorter_than_one_frame_gets_a_scene_embedding(model):
    """HEAR hands over whatever length a task has: a clip under one 25 ms frame (400 samples) is zero-padded to one,
    as the timestamp path pads to one patch (it was refused by the feature extractor)."""
    torch.manual_seed(3)
    audio = torch.rand(2, 100) * 2 - 1
    scene = hear.get_scene_embeddings(audio, model)
    padded = torch.nn.functional.pad(audio, (0, model.feature_extractor.min_samples - 100))
    assert scene.shape == (2, model.scene_embedding_size) and torch.isfinite(scene).all()
    assert torch.equal(scene, hear.get_scene_embeddings(padded, model))
    assert not torch.allclose(scene[0], scene[1])


def test_bad_input_is_refused_clearly(model):
    with pytest.raises(ValueError, match="model folder.*Hub id"):
        hear.load_model("")
    with pytest.raises(ValueError, match=r"\[n_sounds, samples\]"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(ValueError, match="NaN"):
        hear.get_timestamp_embeddings(torch.full((1, 16000), float("nan")), model)


def test_an_empty_batch_gives_empty_embeddings(model):
    audio = torch.zeros(0, 16000)
    assert hear.get_scene_embeddings(audio, model).shape == (0, model.scene_embedding_size)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert embeddings.shape == (0, 21, model.timestamp_embedding_size) and timestamps.shape == (0, 21)


@pytest.mark.parametrize("dtype,message", [(torch.int16, "int16 samples \\(integer PCM\\).*32768"),
                                           (torch.int32, "int32 samples \\(integer PCM\\)"),
                                           (torch.complex64, "complex64 values")])
def test_integer_and_complex_audio_is_refused(model, dtype, message):
    """.float() read int16 PCM as samples of +-32767 and dropped an imaginary part, giving embeddings of another
    sound without a word; the rest of ast_hf refuses both (audio_io.float_samples)."""
    audio = (torch.rand(2, 16000) - 0.5) * 20000
    audio = audio.to(dtype) if not dtype.is_complex else torch.complex(audio / 32768, audio / 32768)
    for function in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(ValueError, match=message):
            function(audio, model)
    # float64 is still taken, as float32
    scene = hear.get_scene_embeddings(torch.rand(1, 16000, dtype=torch.float64) - 0.5, model)
    assert scene.dtype == torch.float32 and torch.isfinite(scene).all()
