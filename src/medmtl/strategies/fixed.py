"""``fixed``: L = sum_k c_k L_k with configured constants (grid-searched weights; survey 3.1)."""

from __future__ import annotations

from typing import Mapping

import torch

from medmtl.strategies.weighted_sum import WeightedSum


class FixedWeights(WeightedSum):
    """Every task of the task set needs a weight: a missing one is an error, never a silent 1."""

    def __init__(self, weights: Mapping[str, float]):
        super().__init__()
        self.weights = {k: float(v) for k, v in weights.items()}

    def setup(self, task_names: list[str]) -> None:
        missing = [k for k in task_names if k not in self.weights]
        unknown = [k for k in self.weights if k not in task_names]
        if missing or unknown:
            raise ValueError(f"optim.strategy.weights must name exactly the tasks {task_names}: missing {missing}, unknown {unknown}.")

    def weighted_total(self, losses):
        return torch.stack([self.weights[k] * v for k, v in losses.items()]).sum()

    def weights_to_log(self):
        return {f"weight/{k}": torch.tensor(v) for k, v in self.weights.items()}
