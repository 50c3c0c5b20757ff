"""What the model does with inputs beyond float32 tensors of sound clips: other float dtypes and numpy arrays are
cast to the model's dtype; a padded clip shorter than one patch and NaN/inf values raise a ValueError that says
which clip and what to do. (That the NaN check stays out of traced graphs is shown by tests/test_export.py: a
fullgraph torch.compile and a torch.export-based ONNX export of the model.)"""

import numpy as np
import pytest
import torch

from ast_hf import ASTForAudioClassification, ASTModel
from helpers import tiny_config

pytestmark = pytest.mark.numeric


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ASTForAudioClassification(tiny_config()).eval()


def features(batch=3, frames=128):
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_other_float_dtypes_and_numpy_arrays_are_cast_to_the_model_dtype(model):
    x = features()
    want = model(x).logits
    assert torch.equal(model(x.double()).logits, want)  # float32 values survive the trip through float64
    assert torch.equal(model(x.numpy()).logits, want)
    assert torch.equal(model(x.numpy().astype(np.float64)).logits, want)
    half = x.half()
    assert torch.equal(model(half).logits, model(half.float()).logits)
    backbone = ASTModel(tiny_config()).eval()
    assert backbone(x.double()).last_hidden_state.dtype == torch.float32


@torch.no_grad()
def test_non_float_input_is_refused_with_its_dtype(model):
    with pytest.raises(ValueError, match="dtype torch.int64; give float log-mel features"):
        model(torch.ones(1, 128, 128, dtype=torch.long))
    with pytest.raises(ValueError, match="input_values is a list; give a torch tensor or numpy array"):
        model([[0.0] * 128] * 128)


@torch.no_grad()
@pytest.mark.parametrize("real_frames", [10, 0])
def test_padded_clip_shorter_than_one_patch_names_the_clip(model, real_frames):
    mask = torch.ones(3, 128, dtype=torch.long)
    mask[1, real_frames:] = 0
    with pytest.raises(ValueError, match=f"clip 1 of the batch has {real_frames} real frames .*smaller than one "
                                         f"16x16 patch .*give at least 16 frames"):
        model(features(), attention_mask=mask)
    mask[1, :16] = 1  # one patch is enough
    assert model(features(), attention_mask=mask).logits.isfinite().all()


@torch.no_grad()
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_input_is_refused_naming_the_clips(model, bad):
    x = features(batch=4)
    x[1, 3, 7] = bad
    x[3, 100, 0] = bad
    with pytest.raises(ValueError, match=r"clip\(s\) \[1, 3\] contain NaN or infinite values"):
        model(x)



@torch.no_grad()
def test_numpy_attention_mask_from_the_feature_extractor_works_like_a_tensor(model):
    """`ASTFeatureExtractor(..., return_tensors="np", return_attention_mask=True)` gives numpy input_values and a numpy
    attention_mask; the model takes both, with the logits of the same tensors."""
    from ast_hf import ASTFeatureExtractor

    noise = np.random.default_rng(0)
    audio = [noise.standard_normal(16000).astype(np.float32), noise.standard_normal(8000).astype(np.float32)]
    inputs = ASTFeatureExtractor(max_length=128)(audio, sampling_rate=16000, return_tensors="np",
                                                return_attention_mask=True, padding="longest")
    assert isinstance(inputs["attention_mask"], np.ndarray) and inputs["attention_mask"].min() == 0
    want = model(torch.from_numpy(inputs["input_values"]),
                 attention_mask=torch.from_numpy(inputs["attention_mask"])).logits
    assert torch.equal(model(**inputs).logits, want)
    with pytest.raises(ValueError, match="attention_mask is a list; give a torch tensor or numpy array"):
        model(inputs["input_values"], attention_mask=inputs["attention_mask"].tolist())
