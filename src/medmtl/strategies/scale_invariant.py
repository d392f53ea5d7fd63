"""Loss-level methods that make the update invariant to each task's loss scale.

A task whose loss is measured in other units (a Dice loss in [0, 1], a heatmap MSE of 1e-4, a
cross-entropy of 2) dominates an equal-weight sum; both methods here remove that effect at the cost
of ``vanilla`` (one forward, one backward, no extra memory). Tasks absent from a batch are left out.

- ``gls``, geometric loss strategy (Chennupati et al. 2019): L = (prod_k L_k)^(1/T), computed as
  exp(mean_k log L_k). Its gradient is sum_k (L / (T L_k)) g_k: each task is weighted by the inverse
  of its own loss, times the common factor L / T.
- ``si``, scale-invariant log losses (the "SI" baseline of Navon et al. 2022): L = sum_k log(L_k +
  eps), gradient sum_k g_k / (L_k + eps). Multiplying a task's loss by a constant adds a constant to
  L and leaves the update unchanged.

Both need positive losses (every loss of the task contracts is >= 0; ``eps`` guards a zero).
"""

from __future__ import annotations

import torch

from medmtl.strategies.weighted_sum import WeightedSum


class LogLossStrategy(WeightedSum):
    """Shared: ``eps`` and the effective weights dL/dL_k of the last iteration, logged."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self._last: dict[str, torch.Tensor] = {}

    def log_losses(self, losses) -> torch.Tensor:
        return torch.log(torch.stack(list(losses.values())) + self.eps)

    def remember(self, effective_weights) -> None:
        self._last = {f"weight/{k}": w.detach().float() for k, w in effective_weights.items()}

    def weights_to_log(self):
        return self._last


class GeometricLossStrategy(LogLossStrategy):
    """``gls``: the geometric mean of the present tasks' losses."""

    def weighted_total(self, losses):
        total = torch.exp(self.log_losses(losses).mean())
        # the effective weight of task k, dL/dL_k = L / (T (L_k + eps))
        self.remember({k: total / (len(losses) * (v + self.eps)) for k, v in losses.items()})
        return total


class ScaleInvariantLosses(LogLossStrategy):
    """``si``: the sum of the log losses."""

    def weighted_total(self, losses):
        self.remember({k: 1.0 / (v + self.eps) for k, v in losses.items()})
        return self.log_losses(losses).sum()
