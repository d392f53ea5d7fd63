"""What LibMTL's bilevel methods (MOML, FORUM; Lin & Zhang 2023) share: task weights
s = softmax(alpha) over logits alpha (each 1/T at the start, so s starts uniform), stepped by their
own Adam (``outer_lr``) on a gradient the method computes; the network's loss is sum_k s_k L_k.

d s / d alpha = diag(s) - s s^T (:func:`softmax_jacobian`, symmetric), so d/dalpha sum_k s_k L_k =
(diag(s) - s s^T) L.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medmtl.strategies.base import StepContext
from medmtl.strategies.own_optimizer import OwnOptimizer
from medmtl.strategies.weighted_sum import WeightedSum


def softmax_jacobian(s: torch.Tensor) -> torch.Tensor:
    """d softmax(alpha) / d alpha at s = softmax(alpha): diag(s) - s s^T."""
    return torch.diag(s) - torch.outer(s, s)


def flat_gradient(ctx: StepContext, loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The union's d loss / d params as one vector (the graph kept)."""
    return torch.cat([g.reshape(-1) for g in ctx.gradients(loss, params)])


def add_flat_(params: Sequence[torch.Tensor], flat: torch.Tensor, scale: float) -> None:
    """params += scale * flat, in place, ``flat`` laid out as :func:`flat_gradient`."""
    offset = 0
    with torch.no_grad():
        for p in params:
            p.add_(flat[offset : offset + p.numel()].view_as(p).to(p.dtype), alpha=scale)
            offset += p.numel()


class SoftmaxTaskWeights(WeightedSum):
    """Base of the bilevel methods: the logits (a buffer), their Adam, sum_k s_k L_k."""

    logits: torch.Tensor

    supports_fp16_scaler = False
    reuses_forward_graph = True
    halves_batches = True

    def __init__(self, outer_lr: float):
        super().__init__()
        self.meta_optimizer = OwnOptimizer(lambda params: torch.optim.Adam(params, lr=outer_lr))

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        self.register_buffer("logits", torch.full((len(self.task_names),), 1.0 / len(self.task_names)))

    def get_extra_state(self) -> dict[str, Any]:
        return self.meta_optimizer.state_dict()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.meta_optimizer.load_state_dict(state)

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def weighted_total(self, losses):
        return self.combine(self.weights(), losses)

    def weights_to_log(self):
        return self.weights_by_task(self.weights())

    def alpha_gradient(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """d/dalpha sum_k s_k L_k = (diag(s) - s s^T) L, in float64, absent tasks' L_k taken as 0."""
        values = torch.zeros(len(self.task_names), dtype=torch.float64, device=self.logits.device)
        values[self.present(list(losses))] = torch.stack([v.detach() for v in losses.values()]).double()
        return softmax_jacobian(self.weights().double()) @ values

    def present(self, names: Sequence[str]) -> torch.Tensor:
        """Indices of ``names`` in the task set."""
        return torch.tensor([self.task_names.index(n) for n in names], device=self.logits.device)
