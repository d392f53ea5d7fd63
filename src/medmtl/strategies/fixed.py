"""``fixed``: L = sum_k c_k L_k with configured constants (grid-searched weights; survey 3.1)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.weighted_sum import WeightedSum


class FixedWeights(WeightedSum):
    """Args:
    weights: task -> c_k. A name that is not a task of the data is an error (a typo would
        otherwise leave the intended task at the default).
    default_weight: c_k of the tasks ``weights`` does not name; ``None`` makes a missing task
        an error instead (every weight written out).
    """

    def __init__(self, weights: Mapping[str, float] | None = None, default_weight: float | None = 1.0):
        super().__init__()
        self.configured = {k: float(v) for k, v in (weights or {}).items()}
        self.default_weight = default_weight
        self.weights = dict(self.configured)

    def setup(self, task_names: list[str]) -> None:
        unknown = [k for k in self.configured if k not in task_names]
        missing = [k for k in task_names if k not in self.configured]
        if unknown:
            raise ConfigError(f"optim.strategy.weights names {unknown}, which are not tasks of this data: {task_names}.")
        if missing and self.default_weight is None:
            raise ConfigError(
                f"optim.strategy.weights must name every task of {task_names} (default_weight is null): missing {missing}."
            )
        fallback = 1.0 if self.default_weight is None else self.default_weight  # unused when every task is named
        self.weights = {k: float(self.configured.get(k, fallback)) for k in task_names}

    def weighted_total(self, losses):
        return torch.stack([self.weights[k] * v for k, v in losses.items()]).sum()

    def weights_to_log(self):
        return {f"weight/{k}": torch.tensor(v) for k, v in self.weights.items()}
