"""Shared test fixtures: paths to the shared ground truth, small random models, generated audio."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AST_HF_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "original"
SSAST_FIXTURES = SHARED / "fixtures" / "ssast"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """`../shared/fixtures/original`, written by the authors' code; tests that need it skip without it."""
    if not FIXTURES.is_dir():
        pytest.skip(f"the original-code fixtures are not at {FIXTURES} (set AST_HF_SHARED to the shared/ folder)")
    return FIXTURES


@pytest.fixture(scope="session")
def ssast_fixtures_dir() -> Path:
    """`../shared/fixtures/ssast`, written by SSAST's own code; tests that need it skip without it."""
    if not SSAST_FIXTURES.is_dir():
        pytest.skip(f"the SSAST-code fixtures are not at {SSAST_FIXTURES} (set AST_HF_SHARED to the shared/ folder)")
    return SSAST_FIXTURES


def tiny_config(**overrides):
    """A small AST config (2 layers, D=64) for fast tests; keyword arguments override fields."""
    from ast_hf import ASTConfig

    fields = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_length=128, num_mel_bins=128, num_labels=5, layer_norm_eps=1e-6,
                  classifier_layer_norm_eps=1e-5)
    fields.update(overrides)
    return ASTConfig(**fields)


@pytest.fixture
def tiny_model():
    import torch

    from ast_hf import ASTForAudioClassification

    torch.manual_seed(0)
    return ASTForAudioClassification(tiny_config()).eval()
