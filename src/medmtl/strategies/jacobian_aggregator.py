"""Any Jacobian aggregator of ``torchjd`` as a strategy (``optim=jd_<name>``).

torchjd implements and tests CAGrad, Nash-MTL, IMTL-G, Aligned-MTL, UPGrad, DualProj, MGDA,
PCGrad, ... as *weightings*: functions of the Gramian G = J J^T (or, for Nash-MTL, of J) that
return the weights a of the update sum_k a_k g_k. This one class plugs any of them into
:class:`~medmtl.strategies.gradient_combination.GradientCombination`, which computes J or G
efficiently and applies the weights; no aggregator is re-implemented here.
"""

from __future__ import annotations

from typing import Any

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
}


class JacobianAggregator(GradientCombination):
    """``aggregator``: a key of :data:`WEIGHTINGS`; ``options``: keyword arguments of its torchjd class."""

    def __init__(self, aggregator: str, mode: str = "jacobian", options: dict[str, Any] | None = None,
                 jacobian_method: str = "loop"):
        if aggregator not in WEIGHTINGS:
            raise ValueError(f"optim.strategy.aggregator must be one of {sorted(WEIGHTINGS)}, got {aggregator!r}.")
        self.class_name, self.needs_jacobian = WEIGHTINGS[aggregator]
        super().__init__(mode, jacobian_method)
        self.aggregator_name = aggregator
        self.options = dict(options or {})
        self._weighting = None

    def setup(self, task_names: list[str]) -> None:
        import torchjd.aggregation as aggregation

        options = dict(self.options)
        if self.aggregator_name == "cagrad":
            options.setdefault("c", 0.5)  # the CAGrad paper's default
        if self.aggregator_name == "nash_mtl":
            options.setdefault("n_tasks", len(task_names))
        self._weighting = getattr(aggregation, self.class_name)(**options)

    def combination_weights(self, gramian, losses, jacobian=None):
        if self.needs_jacobian:
            # a torchjd WeightedAggregator: its public ``weighting`` maps J to the weights
            return self._weighting.weighting(jacobian)
        return self._weighting(gramian)
