"""Shared fixtures: a small synthetic REFUGE written once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# preprocessed samples of the tests' datasets go to a folder of this test session, not ~/.cache
os.environ.setdefault("MEDMTL_CACHE_DIR", tempfile.mkdtemp(prefix="medmtl-cache-"))

from medmtl.data.refuge_synthetic import SyntheticRefugeSpec, generate_synthetic_refuge

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

#: Small enough to write in a second, large enough for 5 stratified folds.
SMALL_SPEC = SyntheticRefugeSpec(
    n_train=24, n_val=16, n_test=10, train_size=(176, 160), eval_size=(160, 160),
    glaucoma_threshold=0.55, seed=3,
)


@pytest.fixture(scope="session")
def refuge_root(tmp_path_factory) -> Path:
    """A read-only synthetic REFUGE in the official layout (tests that modify it copy it first)."""
    return generate_synthetic_refuge(tmp_path_factory.mktemp("refuge") / "REFUGE", SMALL_SPEC)


def quiet_trainer(tmp_path: Path, **options):
    """A CPU Lightning trainer without logger, progress bar, summary, sanity check or checkpoints;
    ``options`` (max_epochs, limit_*_batches, ...) are passed on."""
    import lightning as L

    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, default_root_dir=tmp_path, enable_checkpointing=False, **options)


@pytest.fixture(autouse=True)
def _restore_deterministic_mode():
    """A Trainer(deterministic=True) switches torch's deterministic algorithms on for the whole
    process; put the setting back so that no test depends on which tests ran before it."""
    import torch

    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
