"""Fixtures shared by the tests; the plain helpers they use live in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import FIXTURES, SSAST_FIXTURES, tiny_config, trained_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Kernel choices are measured in each test process, never read from or written to the user's cache (probe_cache);
# test_probe_cache.py points the cache at its own files.
os.environ["AST_HF_PROBE_CACHE"] = "0"

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


@pytest.fixture
def tiny_model():
    import torch

    from ast_hf import ASTForAudioClassification

    torch.manual_seed(0)
    return ASTForAudioClassification(tiny_config()).eval()


@pytest.fixture(scope="session")
def trained():
    """(model in eval mode, feature extractor): the tiny AST trained once per test process to tell speech, a tone
    and noise apart (`helpers.trained_tiny_model`). Shared: do not modify it."""
    return trained_tiny_model()
