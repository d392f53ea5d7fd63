"""``jd_cosmos`` and ``jd_pbi``: torchjd's preference-based scalarizations of the task losses, one
backward of the scalar (the cost of ``vanilla``).

With L the vector of the present tasks' losses and r a preference vector over the task set
(restricted to the present tasks):

- COSMOS (Ruchte & Grabocka 2021): sum_k r_k L_k - lambda cos(r, L), the linear scalarisation
  rewarded for aligning L with the preference direction (``lambda_``; 0 is the weighted sum);
- PBI (Zhang & Li 2007, MOEA/D's penalty-based boundary intersection): with w = r / ||r||,
  d_1 = L^T w and d_2 = ||L - d_1 w||, the scalar d_1 + theta d_2 (``theta``; the paper's 5).
  The reference point is the origin (every loss here is >= 0).

``preference``: ``uniform`` (r_k = 1/T, one trade-off: what a multi-task baseline trains) or
``dirichlet`` (r ~ Dir(``concentration`` 1), redrawn at every iteration as the papers do to cover
the Pareto front; the draw is rank 0's on every rank). COSMOS also conditions the network on r; that
is a change of the network the papers' Pareto-front experiments make, and is not done here: with a
``dirichlet`` preference the network sees the losses' scalarisation only.

Data parallelism is exact: the scalar is a function of the union's losses (the training context's
global losses), so its gradient averaged over the ranks is the union's. Tasks absent from a batch are
left out of L and r.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.weighted_sum import WeightedSum

SCALARIZERS = ("cosmos", "pbi")
PREFERENCES = ("uniform", "dirichlet")


class PreferenceScalarization(WeightedSum):
    """Args: scalarizer (``cosmos`` | ``pbi``); preference (``uniform`` | ``dirichlet``);
    lambda_ (COSMOS's cosine penalty, >= 0); theta (PBI's perpendicular penalty, >= 0);
    concentration (the Dirichlet's, > 0)."""

    def __init__(
        self, scalarizer: str, preference: str = "uniform", lambda_: float = 1.0, theta: float = 5.0, concentration: float = 1.0
    ):
        super().__init__()
        if scalarizer not in SCALARIZERS:
            raise ConfigError(f"optim.strategy.scalarizer must be one of {SCALARIZERS}, got {scalarizer!r}.")
        if preference not in PREFERENCES:
            raise ConfigError(f"optim.strategy.preference must be one of {PREFERENCES}, got {preference!r}.")
        if lambda_ < 0 or theta < 0:
            raise ConfigError(f"optim.strategy.lambda_ and theta must be >= 0, got {lambda_} and {theta}.")
        if concentration <= 0:
            raise ConfigError(f"optim.strategy.concentration must be > 0, got {concentration}.")
        self.scalarizer, self.preference = scalarizer, preference
        self.lambda_, self.theta, self.concentration = lambda_, theta, concentration

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        self._drawn: torch.Tensor | None = None
        self._last: torch.Tensor | None = None

    def observe(self, ctx, batch, outputs, losses) -> None:
        if self.preference == "dirichlet":
            alpha = torch.full((len(self.task_names),), float(self.concentration), dtype=torch.float64)
            self._drawn = ctx.agree(torch.distributions.Dirichlet(alpha).sample())

    def weighted_total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from torchjd.scalarization import COSMOS, PBI

        values = torch.stack(list(losses.values()))
        count = len(self.task_names)
        full = self._drawn if self._drawn is not None else torch.full((count,), 1.0 / count, dtype=torch.float64)
        self._last = full
        present = torch.tensor([self.task_names.index(k) for k in losses])
        weights = full[present].to(device=values.device, dtype=values.dtype)
        scalarize = COSMOS(self.lambda_, weights) if self.scalarizer == "cosmos" else PBI(self.theta, weights)
        return scalarize(values)

    def weights_to_log(self) -> dict[str, torch.Tensor]:
        return {} if self._last is None else {f"preference/{k}": w for k, w in zip(self.task_names, self._last.float())}


__all__ = ["PreferenceScalarization"]
