"""ASTEnsemble: averaged probabilities, and members that cannot be averaged refused clearly."""

from __future__ import annotations

import pytest
import torch

from ast_hf import ASTForAudioClassification, ASTModel
from ast_hf.ensemble import ASTEnsemble
from helpers import tiny_config


def _model(num_labels=3, **overrides):
    return ASTForAudioClassification(tiny_config(num_hidden_layers=1, num_labels=num_labels, **overrides)).eval()


@torch.no_grad()
def test_probabilities_are_the_mean_of_the_members():
    torch.manual_seed(0)
    first, second = _model(), _model(max_length=256)
    values = torch.randn(2, 128, 128)
    out = ASTEnsemble([first, second])(values)
    expected = (first(values).logits.softmax(-1) + second(values).logits.softmax(-1)) / 2
    torch.testing.assert_close(out.probabilities, expected)
    torch.testing.assert_close(out.logits.softmax(-1), expected)


def test_models_that_give_no_class_probabilities_are_refused():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="regression"):
        ASTEnsemble([_model(problem_type="regression", num_labels=1)])
    with pytest.raises(ValueError, match="regression"):
        ASTEnsemble([ASTForAudioClassification(tiny_config(num_hidden_layers=1, num_labels=1))])
    with pytest.raises(ValueError, match="classification head"):
        ASTEnsemble([ASTModel(tiny_config(num_hidden_layers=1))])
    with pytest.raises(ValueError, match="list of models"):
        ASTEnsemble(_model())
