"""Loss-weighting strategies share one iteration: one backward of sum_k w_k L_k, one step.

Subclasses choose w (``weighted_total``). Tasks absent from a batch are left out of the sum; a
task's weight never depends on whether the other tasks are present.

- ``vanilla`` (equal weights): w_k = 1.
- ``stl``: the same update on :class:`~medmtl.models.base.SeparateNetworks`, one network per
  task. The networks share no parameter, so dL/dtheta for network k is dL_k/dtheta and Adam,
  acting element-wise, makes this exactly T independent trainings; its parameter count and
  iteration time are the sums over the single-task networks, as Pascal et al. 2022 reports them.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import torch

from medmtl.strategies.base import Batch, StepContext, Strategy


class WeightedSum(Strategy):
    """Base: subclasses give ``weighted_total(losses)``."""

    #: the task set (set by ``setup`` in the strategies that weight by task)
    task_names: list[str]

    @abc.abstractmethod
    def weighted_total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The scalar to back-propagate."""

    def observe(
        self, ctx: StepContext, batch: Batch, outputs: Mapping[str, torch.Tensor], losses: Mapping[str, torch.Tensor]
    ) -> None:
        """Hook for strategies that keep statistics (of losses, of task performance)."""

    def weights_to_log(self) -> dict[str, torch.Tensor]:
        return {}

    def combine(self, weights: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """sum_k w_k L_k over the present tasks, ``weights`` indexed like ``self.task_names`` (the
        whole task set, so that a task's weight does not depend on which others are present)."""
        return torch.stack([weights[self.task_names.index(k)].to(v.dtype) * v for k, v in losses.items()]).sum()

    def weights_by_task(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """``weight/<task>`` entries to log."""
        return {f"weight/{k}": w for k, w in zip(self.task_names, weights.float())}

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        outputs = ctx.forward(batch)
        losses = ctx.losses(outputs, batch)
        if not losses:
            return {}
        self.observe(ctx, batch, outputs, losses)
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        total = self.weighted_total(losses)
        ctx.backward(total)
        ctx.clip_gradients(optimizer)
        optimizer.step()
        return self.detached(losses) | {"loss/total": total.detach()} | self.weights_to_log()


class EqualWeights(WeightedSum):
    """``vanilla``: L = sum_k L_k."""

    def weighted_total(self, losses):
        return torch.stack(list(losses.values())).sum()


class SingleTask(EqualWeights):
    """``stl``: one network per task (see the module docstring)."""

    separate_networks = True
