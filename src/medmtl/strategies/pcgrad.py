"""``pcgrad`` (Yu et al. 2020; Pascal et al. 2022's baseline; docs/methods.md), written on the Gramian.

For each task i: g_i^PC = g_i; visit the other tasks j in a fresh random order; if
g_i^PC . g_j < 0, g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j (projection on the ORIGINAL g_j).
The update is sum_i g_i^PC (``reduction: sum``, the paper) or the mean.

Every g_i^PC stays a combination sum_j c_ij g_j, so the method only needs G = J J^T:
g_i^PC . g_j = c_i . G[:, j] and ||g_j||^2 = G[j, j]. The update weights are a = sum_i c_i. A task
with a zero gradient (G[j, j] = 0) is never projected on. Heads are untouched (the base class
gives them their own task's gradient).
"""

from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.gradient_combination import GradientCombination


def pcgrad_weights(gramian: torch.Tensor, generator: torch.Generator | None = None, reduction: str = "sum") -> torch.Tensor:
    t = gramian.shape[0]
    gramian = gramian.to(torch.float64)
    coefficients = torch.eye(t, dtype=torch.float64, device=gramian.device)
    for i in range(t):
        for j in torch.randperm(t, generator=generator).tolist():
            if j == i or gramian[j, j] <= 0:
                continue
            dot = coefficients[i] @ gramian[:, j]
            if dot < 0:
                coefficients[i, j] -= dot / gramian[j, j]
    weights = coefficients.sum(dim=0)
    return weights / t if reduction == "mean" else weights


class PCGrad(GradientCombination):
    """Projecting conflicting gradients; ``reduction`` is ``sum`` (paper) or ``mean``."""

    def __init__(self, mode: str = "jacobian", reduction: str = "sum", jacobian_method: str = "loop"):
        super().__init__(mode, jacobian_method)
        if reduction not in ("sum", "mean"):
            raise ConfigError(f"optim.strategy.reduction must be sum or mean, got {reduction!r}.")
        self.reduction = reduction

    def combination_weights(self, gramian, losses, jacobian=None, names=None):
        # the order is drawn from torch's global RNG: seeded runs are reproducible
        return pcgrad_weights(gramian.cpu(), reduction=self.reduction).to(gramian.device)
