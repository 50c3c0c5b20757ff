"""Prediction ensembles: the mean of the class probabilities of several AST classifiers on the same input.

`ASTEnsemble` averages sigmoid probabilities for multi-label members and softmax probabilities otherwise (the
authors' 0.485-mAP AudioSet ensemble); its output holds the probabilities [batch, num_labels] and logits mapped
back from them. Inference only needs this module: it imports neither `Trainer` nor the training package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.utils import ModelOutput

from .modeling_ast import ASTForAudioClassification


@dataclass
class ASTEnsembleOutput(ModelOutput):
    """logits [batch, num_labels]: the ensemble's probabilities mapped back to logits (log for softmax, logit for
    sigmoid), so softmax/sigmoid of them gives `probabilities` [batch, num_labels]."""

    logits: torch.Tensor | None = None
    probabilities: torch.Tensor | None = None


class ASTEnsemble(nn.Module):
    """Average the class probabilities of several `ASTForAudioClassification` models on the same input.

    All members must share the label set (`num_labels`, `id2label`) and mel bins; they may differ in size,
    strides or `max_length` (each adapts to the input's frame count). Multi-label members
    (`problem_type="multi_label_classification"`) are averaged after a sigmoid, others after a softmax.
    """

    def __init__(self, models: Sequence[ASTForAudioClassification]):
        super().__init__()
        if isinstance(models, nn.Module) or not isinstance(models, Sequence):
            raise ValueError(f"give a list of models, e.g. ASTEnsemble([model1, model2]), got {type(models).__name__}")
        if not models:
            raise ValueError("an ensemble needs at least one model")
        for i, model in enumerate(models):
            if not hasattr(model, "classifier"):
                raise ValueError(f"model {i} is a {type(model).__name__} without a classification head; an ensemble "
                                 f"averages the class probabilities of ASTForAudioClassification models")
            cfg = model.config
            if cfg.problem_type == "regression" or (cfg.problem_type is None and cfg.num_labels == 1):
                raise ValueError(f"model {i} is a regression model (problem_type {cfg.problem_type!r}, "
                                 f"{cfg.num_labels} label): an ensemble averages class probabilities of classifiers")
        self.models = nn.ModuleList(models)
        first = models[0].config
        for i, model in enumerate(models[1:], start=1):
            cfg = model.config
            if cfg.num_labels != first.num_labels or dict(cfg.id2label) != dict(first.id2label):
                raise ValueError(f"model {i} predicts {cfg.num_labels} labels ({_sample(cfg.id2label)}) but model 0 "
                                 f"predicts {first.num_labels} ({_sample(first.id2label)}); members must share labels")
            if cfg.num_mel_bins != first.num_mel_bins:
                raise ValueError(f"model {i} takes {cfg.num_mel_bins} mel bins, model 0 {first.num_mel_bins}")
            if (cfg.problem_type == "multi_label_classification") != self.multi_label:
                raise ValueError(f"model {i} and model 0 disagree on multi-label vs single-label outputs")
        self.config = first

    @property
    def multi_label(self) -> bool:
        return self.models[0].config.problem_type == "multi_label_classification"

    @classmethod
    def from_pretrained(cls, paths: Sequence[str | Path], **kwargs) -> ASTEnsemble:
        """Load each folder (or Hub id) with `ASTForAudioClassification.from_pretrained(path, **kwargs)`."""
        if isinstance(paths, (str, Path)):
            raise ValueError("give a list of model folders, e.g. ASTEnsemble.from_pretrained([dir1, dir2])")
        return cls([ASTForAudioClassification.from_pretrained(p, **kwargs) for p in paths]).eval()

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ASTEnsembleOutput:
        """input_values [batch, frames, mel bins] (attention_mask [batch, frames]) -> `ASTEnsembleOutput`."""
        activation = torch.sigmoid if self.multi_label else (lambda x: x.softmax(dim=-1))
        probs = torch.stack([activation(m(input_values, attention_mask=attention_mask).logits.float())
                             for m in self.models]).mean(dim=0)
        eps = torch.finfo(probs.dtype).tiny
        logits = torch.logit(probs, eps=1e-7) if self.multi_label else probs.clamp_min(eps).log()
        return ASTEnsembleOutput(logits=logits, probabilities=probs)


def _sample(id2label) -> str:
    names = list(dict(id2label).values())
    return ", ".join(map(str, names[:3])) + (", ..." if len(names) > 3 else "")


__all__ = ["ASTEnsemble", "ASTEnsembleOutput"]
