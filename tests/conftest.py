"""Fixtures only (shared helpers live in helpers.py): a small synthetic REFUGE written once per
test session, and the deterministic-mode guard."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# preprocessed samples of the tests' datasets go to a folder of this test session, not ~/.cache
os.environ.setdefault("MEDMTL_CACHE_DIR", tempfile.mkdtemp(prefix="medmtl-cache-"))

from helpers import SMALL_SPEC
from medmtl.data.refuge_synthetic import generate_synthetic_refuge


@pytest.fixture(scope="session")
def refuge_root(tmp_path_factory) -> Path:
    """A read-only synthetic REFUGE in the official layout (tests that modify it copy it first)."""
    return generate_synthetic_refuge(tmp_path_factory.mktemp("refuge") / "REFUGE", SMALL_SPEC)


@pytest.fixture(autouse=True)
def _restore_deterministic_mode():
    """A Trainer(deterministic=True) switches torch's deterministic algorithms on for the whole
    process; put the setting back so that no test depends on which tests ran before it."""
    import torch

    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
