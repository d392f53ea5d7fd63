"""Any Jacobian aggregator of ``torchjd`` as a strategy (``optim=jd_<name>``).

torchjd implements and tests CAGrad, Nash-MTL, IMTL-G, Aligned-MTL, UPGrad, DualProj, MGDA,
PCGrad, ... as *weightings*: functions of the Gramian G = J J^T (or, for Nash-MTL, of J) that
return the weights a of the update sum_k a_k g_k. This one class plugs any of them into
:class:`~medmtl.strategies.gradient_combination.GradientCombination`, which computes J or G
efficiently and applies the weights; no aggregator is re-implemented here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmtl.errors import ConfigError
from medmtl.strategies.gradient_combination import GradientCombination

#: name -> (torchjd weighting class name, needs the Jacobian itself)
WEIGHTINGS = {
    "upgrad": ("UPGradWeighting", False),
    "imtl_g": ("IMTLGWeighting", False),
    "aligned_mtl": ("AlignedMTLWeighting", False),
    "cagrad": ("CAGradWeighting", False),
    "dualproj": ("DualProjWeighting", False),
    "mgda": ("MGDAWeighting", False),
    "pcgrad": ("PCGradWeighting", False),
    "mean": ("MeanWeighting", False),
    "nash_mtl": ("NashMTL", True),
    "fairgrad": ("FairGradWeighting", False),
}


class JacobianAggregator(GradientCombination):
    """``aggregator``: a key of :data:`WEIGHTINGS`; ``options``: keyword arguments of its torchjd class."""

    def __init__(
        self, aggregator: str, mode: str = "jacobian", options: dict[str, Any] | None = None, jacobian_method: str = "loop"
    ):
        if aggregator not in WEIGHTINGS:
            raise ConfigError(f"optim.strategy.aggregator must be one of {sorted(WEIGHTINGS)}, got {aggregator!r}.")
        self.class_name, self.needs_jacobian = WEIGHTINGS[aggregator]
        super().__init__(mode, jacobian_method)
        self.aggregator_name = aggregator
        self.options = dict(options or {})
        self._weightings: dict[int, Any] = {}

    def weighting(self, n_tasks: int):
        """The torchjd object for ``n_tasks`` present tasks. Nash-MTL is built for a fixed number
        of tasks and keeps state between steps: with partial labels, each number of present tasks
        gets its own instance (and state)."""
        if n_tasks not in self._weightings:
            import torchjd.aggregation as aggregation

            options = dict(self.options)
            if self.aggregator_name == "cagrad":
                options.setdefault("c", 0.5)  # the CAGrad paper's default
            if self.aggregator_name == "fairgrad":
                options.setdefault("alpha", 1.0)  # proportional fairness, FairGrad's main setting
            if self.aggregator_name == "nash_mtl":
                options["n_tasks"] = n_tasks
            self._weightings[n_tasks] = getattr(aggregation, self.class_name)(**options)
        return self._weightings[n_tasks]

    def get_extra_state(self) -> torch.Tensor:
        """Nash-MTL's solver state per task count -- step counter, Gramian normaliser and previous
        weights alpha -- in the module's state dict, so that a resumed run computes the same
        weights as an uninterrupted one. One float64 tensor, a row per task count
        ``[n, step, normaliser, alpha_1..alpha_n, NaN padding]``, so that the state dict holds
        tensors only; no rows for the stateless aggregators."""
        rows = []
        for n_tasks, aggregator in sorted(self._weightings.items()):
            solver = getattr(aggregator, "weighting", None)
            if solver is not None and hasattr(solver, "prvs_alpha"):
                normaliser = float(np.asarray(solver.normalization_factor).reshape(-1)[0])
                rows.append([n_tasks, float(solver.step), normaliser, *np.asarray(solver.prvs_alpha, dtype=np.float64)])
        width = 3 + max((len(r) - 3 for r in rows), default=0)
        state = torch.full((len(rows), width), float("nan"), dtype=torch.float64)
        for i, row in enumerate(rows):
            state[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        return state

    def set_extra_state(self, state: torch.Tensor) -> None:
        for row in state.tolist():
            n_tasks = int(row[0])
            solver = self.weighting(n_tasks).weighting
            solver.step = row[1]
            solver.normalization_factor = np.array([row[2]])
            solver.prvs_alpha = np.array(row[3 : 3 + n_tasks], dtype=np.float64)
            if solver.step > 0:
                # torchjd builds its convex problem on the first step only (step == 0); a restored
                # solver is past it. Private torchjd method: exercised by tests/test_gradient_combination.py
                solver._init_optim_problem()

    def setup(self, task_names: list[str]) -> None:
        self.weighting(len(task_names))  # fail at start-up on a missing solver or a bad option

    def combination_weights(self, gramian, losses, jacobian=None):
        weighting = self.weighting(gramian.shape[0])
        if self.needs_jacobian:
            # a torchjd WeightedAggregator: its public ``weighting`` maps J to the weights
            return weighting.weighting(jacobian)
        return weighting(gramian)
