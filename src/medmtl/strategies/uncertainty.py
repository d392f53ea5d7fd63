"""``uncertainty`` (Kendall et al. 2018; survey 3.1.1): homoscedastic uncertainty weighting.

L = sum_k (exp(-s_k) L_k + s_k) / 2 with learnable s_k = log sigma_k^2, initialised at 0 and
trained by the network's optimizer (they are parameters of the strategy, hence in its param list
and in every checkpoint).
"""

from __future__ import annotations

import torch
from torch import nn

from medmtl.strategies.weighted_sum import WeightedSum


class UncertaintyWeighting(WeightedSum):
    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        self.log_variance = nn.Parameter(torch.zeros(len(self.task_names)))

    def weighted_total(self, losses):
        terms = []
        for name, loss in losses.items():
            s = self.log_variance[self.task_names.index(name)]
            terms.append(0.5 * (torch.exp(-s) * loss + s))
        return torch.stack(terms).sum()

    def weights_to_log(self):
        return {f"weight/{k}": torch.exp(-s.detach()) / 2 for k, s in zip(self.task_names, self.log_variance)}
