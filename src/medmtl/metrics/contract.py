"""The evaluator contract: what a dataset's metrics offer the training module and the run.

The module feeds every evaluation batch to ``update(outputs, batch)`` (network outputs, never
NaN: :mod:`medmtl.nonfinite`), asks ``compute()`` for the split's metrics at the end of the
stage, and, after testing, ``predictions()`` for ``predictions.npz`` (per-sample arrays for ROC
curves, a few whole examples for overlays). ``TASK_METRICS`` names, per task, the one metric that
stands for it in Delta_MTL (survey Eq. 10) and in the report's per-task columns;
``LOWER_IS_BETTER`` the metrics whose decrease is an improvement (recorded in ``metrics.json``,
read by the report's best-method marks and Delta_MTL signs).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Evaluator(Protocol):
    TASK_METRICS: Mapping[str, str]
    LOWER_IS_BETTER: AbstractSet[str]
    #: the attributes ``reset`` creates: what distributed evaluation gathers and merges over the
    #: ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...]

    def reset(self) -> None:
        """Forget what was accumulated (a new stage)."""

    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        """Accumulate one batch: ``outputs`` are the network's logits per task."""

    def compute(self) -> dict[str, float]:
        """Metrics over everything accumulated since ``reset``."""

    def predictions(self) -> dict[str, np.ndarray]:
        """Per-sample results and kept examples, written to ``predictions.npz`` after testing."""
