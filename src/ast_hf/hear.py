"""The HEAR 2021 API (https://hearbenchmark.com): `load_model`, `get_scene_embeddings`, `get_timestamp_embeddings`.

* Scene embedding [D]: the pooled output (mean of the cls and distillation tokens after the final LayerNorm), the
  vector the classifier reads; clips longer than the model's input are cut into windows as `embed` does and
  their window embeddings averaged.
* Timestamp embeddings [T, D] every 50 ms: one forward per window (as in `frame_scores`: windows stitched, each
  column from the window where it is most central); each time column's patch tokens after the final LayerNorm are
  averaged over frequency, giving one embedding per column (every time_stride x 10 ms: 100 ms for the released
  models), centred on the 16-frame patch it summarises (column j at j hop + 87.5 ms). The columns are linearly
  interpolated to the 50 ms grid 0, 50, 100, ... ms up to the end of the clip (edges held), so timestamps are
  regular and the last is within 50 ms of the end. Clips shorter than one patch (0.175 s) are zero-padded to it
  (for the scene embedding, clips shorter than one 25 ms frame are zero-padded to one).

The model must be a folder (or a Hub id, online) holding an AST and its `preprocessor_config.json`; there is no
offline default checkpoint, so `load_model("")` says which to give.
"""

from __future__ import annotations

import numpy as np
import torch

from .audio_io import float_samples
from .configuration_ast import patch_shape
from .embeddings import embed
from .frame_level import column_tokens, stitch_columns
from .long_audio import FRAME_SHIFT_SECONDS

TIMESTAMP_HOP_MS = 50.0


class HEARModel(torch.nn.Module):
    """An AST backbone with its feature extractor and the attributes HEAR asks for: `sample_rate` (Hz),
    `scene_embedding_size` and `timestamp_embedding_size` (D)."""

    def __init__(self, model, feature_extractor):
        super().__init__()
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.scene_embedding_size = int(model.config.hidden_size)
        self.timestamp_embedding_size = int(model.config.hidden_size)

    @property
    def config(self):
        return self.model.config


def load_model(model_file_path: str = "") -> HEARModel:
    """An AST backbone for HEAR from a model folder (config.json, weights, preprocessor_config.json) or a Hub id
    (online), on the CPU (the validator moves it with `.to(device)`)."""
    if not model_file_path:
        raise ValueError("ast_hf.hear.load_model needs a model: give the path of an AST model folder (config.json, "
                         "model.safetensors, preprocessor_config.json, e.g. one written by `ast-hf convert`) or a Hub "
                         "id such as MIT/ast-finetuned-audioset-10-10-0.4593 (online)")
    from .model_loading import load_for_inference

    model, feature_extractor = load_for_inference(model_file_path, "cpu", backbone_only=True)
    return HEARModel(model, feature_extractor)


def _clips(audio, model: HEARModel) -> list[np.ndarray]:
    if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
        raise ValueError(f"audio must be a [n_sounds, samples] float tensor at {model.sample_rate} Hz, got "
                         f"{type(audio).__name__} of shape {tuple(getattr(audio, 'shape', ()))}")
    # integer PCM, bool or complex samples are refused by name: .float() took int16 as +-32767 and dropped an
    # imaginary part, giving embeddings of another sound without a word
    clips = float_samples(audio, "audio")
    if not np.isfinite(clips).all():
        raise ValueError("audio contains NaN or infinite samples")
    return list(clips)


def get_scene_embeddings(audio: torch.Tensor, model: HEARModel) -> torch.Tensor:
    """audio [n, samples] (floats in [-1, 1] at `model.sample_rate`) -> float32 [n, D] on the audio's device."""
    rate, fe = model.sample_rate, model.feature_extractor
    # A clip shorter than one 25 ms frame is zero-padded to one (as the timestamp path pads to one patch): HEAR
    # hands over whatever length its tasks have, and the embedding of such a clip is still defined.
    out = [embed(model.model, fe, np.pad(clip, (0, max(0, fe.min_samples - len(clip)))), sampling_rate=rate).embedding
           for clip in _clips(audio, model)]
    if not out:  # no sounds: an empty batch
        return torch.zeros(0, model.scene_embedding_size, device=audio.device)
    return torch.from_numpy(np.stack(out).astype(np.float32)).to(audio.device)


def get_timestamp_embeddings(audio: torch.Tensor, model: HEARModel) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [n, samples] -> (float32 embeddings [n, T, D], timestamps [n, T] in ms), one every 50 ms from 0 to
    the end of the clip, on the audio's device."""
    rate, fe, net = model.sample_rate, model.feature_extractor, model.model
    patch_samples = (patch_shape(net.config.patch_size)[1] - 1) * round(FRAME_SHIFT_SECONDS * rate) + fe.min_samples
    embeddings = []
    length_ms = audio.shape[1] / rate * 1000
    stamps = np.arange(int(length_ms // TIMESTAMP_HOP_MS) + 1) * TIMESTAMP_HOP_MS
    for clip in _clips(audio, model):
        clip = np.pad(clip, (0, max(0, patch_samples - len(clip))))
        columns = stitch_columns(net, fe, clip, lambda values, mask, frames: column_tokens(net, values, mask, frames),
                                 sampling_rate=rate, progress=False)
        centres = (np.arange(len(columns.values)) * columns.hop + patch_samples / rate / 2) * 1000
        # Linear interpolation between the two nearest column centres (edges held): a fractional column index.
        position = np.interp(stamps, centres, np.arange(len(centres)))
        lower = np.floor(position).astype(int)
        upper = np.minimum(lower + 1, len(centres) - 1)
        weight = (position - lower)[:, None]
        embeddings.append((1 - weight) * columns.values[lower] + weight * columns.values[upper])
    stacked = np.stack(embeddings) if embeddings else np.zeros((0, len(stamps), model.timestamp_embedding_size))
    values = torch.from_numpy(stacked.astype(np.float32)).to(audio.device)
    timestamps = torch.from_numpy(np.tile(stamps.astype(np.float32), (len(embeddings), 1))).to(audio.device)
    return values, timestamps


__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings", "HEARModel"]
