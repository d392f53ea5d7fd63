"""IMTL, impartial multi-task learning (Liu et al. 2021, ICLR).

- ``imtl_l`` (IMTL-L, the loss half): each task gets a learnable scale s_k (initialised at 0,
  trained by the network's optimizer) and the objective is

      L = sum_k ( e^{s_k} L_k - s_k ),

  so that dL/ds_k = e^{s_k} L_k - 1 = 0 drives every scaled loss e^{s_k} L_k towards 1; the
  network receives sum_k e^{s_k} g_k. Cost: that of ``vanilla``.
- ``imtl`` (the paper's hybrid, IMTL-L + IMTL-G): the same scaled losses, and the shared update
  is IMTL-G's combination of their gradients (torchjd's ``IMTLGWeighting``: the aggregate has
  equal projections on every unit task gradient, and the weights sum to 1). The scales receive the
  gradient of sum_k (e^{s_k} L_k - s_k) as in IMTL-L; each head receives its own scaled loss's
  gradient. Cost: that of the Jacobian methods (T backward passes in ``mode=jacobian``);
  ``mode=representation`` takes IMTL-G on the shared representation, as the paper does.
"""

from __future__ import annotations

import torch
from torch import nn

from medmtl.strategies.jacobian_aggregator import JacobianAggregator
from medmtl.strategies.weighted_sum import WeightedSum


class LearnedLossScales(nn.Module):
    """The IMTL-L transform L_k -> e^{s_k} L_k - s_k over a task set."""

    def __init__(self, task_names: list[str]):
        super().__init__()
        self.task_names = list(task_names)
        self.log_scale = nn.Parameter(torch.zeros(len(self.task_names)))

    def forward(self, stacked: torch.Tensor, names: list[str]) -> torch.Tensor:
        s = self.log_scale[[self.task_names.index(n) for n in names]].to(stacked.dtype)
        return torch.exp(s) * stacked - s

    def weights_by_task(self) -> dict[str, torch.Tensor]:
        return {f"scale/{k}": torch.exp(s.detach()) for k, s in zip(self.task_names, self.log_scale)}


class ImpartialLossScaling(WeightedSum):
    """``imtl_l``: one backward of sum_k (e^{s_k} L_k - s_k)."""

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        self.scales = LearnedLossScales(self.task_names)

    def weighted_total(self, losses):
        return self.scales(torch.stack(list(losses.values())), list(losses)).sum()

    def weights_to_log(self):
        return {k.replace("scale/", "weight/"): v for k, v in self.scales.weights_by_task().items()}


class ImpartialMTL(JacobianAggregator):
    """``imtl``: IMTL-G on the gradients of the IMTL-L scaled losses."""

    def __init__(self, mode: str = "jacobian", jacobian_method: str = "loop"):
        super().__init__("imtl_g", mode=mode, jacobian_method=jacobian_method)

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.scales = LearnedLossScales(task_names)

    def transform_losses(self, stacked, names):
        return self.scales(stacked, names)
