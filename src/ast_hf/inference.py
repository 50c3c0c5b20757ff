"""The one inference path: features of clips, one model call, activation, label names and top-k selection.

`tag_long_audio`, `embed`, `explain` and `predict_files` all score through these, so a clip gets the same numbers
whichever of them scores it.

* `featurize`: mono clips at the extractor's rate -> ([n, frames, mel bins] features, [n, frames] mask or None),
  each clip padded to at least the model's `max_length` frames, as in training.
* `run_model`: one forward pass in eval mode under `torch.inference_mode`, inputs moved to the model's device
  and floating dtype; the model's train/eval mode is restored afterwards.
* `resolve_activation` / `apply_activation`: "auto" is the pipeline's rule (sigmoid for multi-label models such
  as AudioSet's, none for regression, else softmax); scores come back as float32 [n, labels].
* `label_names`, `select_top`: the config's label names; the best (label, score) pairs of a score vector.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .labels import generic_label

ACTIVATIONS = ("auto", "sigmoid", "softmax", "none")


def featurize(feature_extractor, clips: list[np.ndarray], min_frames: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features of mono clips at the extractor's rate: ([n, frames, mel bins], [n, frames] mask or None).

    Every clip is padded to at least `min_frames` frames (the model's `max_length`, as in training); when clips
    are longer and of different lengths, the batch is padded to the longest and the mask marks each clip's own
    frames (None when all are equal).
    """
    out = feature_extractor(clips, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt",
                            padding="max_length", max_length=min_frames, truncation=False)
    values = out["input_values"]
    frames = torch.tensor([max(min_frames, feature_extractor.frames_for(len(c))) for c in clips])
    if bool((frames == values.shape[1]).all()):
        return values, None
    mask = (torch.arange(values.shape[1])[None, :] < frames[:, None]).to(torch.long)
    return values, mask


def model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Where the model's parameters live and the floating dtype its inputs take (float32 for integer weights)."""
    param = next(model.parameters())
    return param.device, param.dtype if param.dtype.is_floating_point else torch.float32


def run_model(model, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
    """One forward pass of `model` on features [n, frames, mel bins] (and a [n, frames] mask): eval mode,
    `torch.inference_mode`, inputs on the model's device and dtype; the caller's train/eval mode is restored.
    `kwargs` go to the model (e.g. `output_attentions=True`). Returns the model's output."""
    device, dtype = model_device_dtype(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(input_values=input_values.to(device, dtype),
                         attention_mask=None if attention_mask is None else attention_mask.to(device), **kwargs)
    finally:
        model.train(was_training)


def resolve_activation(config, activation: str = "auto") -> str:
    """"auto" -> the pipeline's rule: sigmoid for multi-label models (AudioSet), none for regression, else softmax."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'auto', 'sigmoid', 'softmax' or 'none', got {activation!r}")
    if activation != "auto":
        return activation
    problem = getattr(config, "problem_type", None)
    return {"multi_label_classification": "sigmoid", "regression": "none"}.get(problem, "softmax")


def apply_activation(logits: torch.Tensor, activation: str) -> np.ndarray:
    """Logits [n, labels] -> float32 scores [n, labels] on the CPU, after a resolved `activation`."""
    logits = logits.float()
    if activation == "sigmoid":
        logits = logits.sigmoid()
    elif activation == "softmax":
        logits = logits.softmax(dim=-1)
    return logits.cpu().numpy()


def label_names(config) -> list[str]:
    """One name per model output: the config's `id2label`, else LABEL_<i>."""
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), generic_label(i)))) for i in range(config.num_labels)]


def select_top(scores: np.ndarray, labels: list[str], k: int | None = 5,
               threshold: float | None = None) -> list[tuple[str, float]]:
    """(label, score) pairs of a [labels] score vector, best first (ties in label order): the `k` best (None or
    0: all), those >= `threshold` only. ValueError for a negative `k` or a NaN / infinite `threshold`."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0):
        raise ValueError(f"k must be >= 0, a whole number (0 or None: all labels), got {k!r}")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite score, got {threshold}")
    order = np.argsort(-scores, kind="stable")
    if k:
        order = order[:k]
    return [(labels[i], float(scores[i])) for i in order if threshold is None or scores[i] >= threshold]


__all__ = ["featurize", "run_model", "model_device_dtype", "resolve_activation", "apply_activation", "label_names",
           "select_top"]
