"""Independent optimizers (``mtl_io``, Pascal et al. 2022) and its shared-optimizer twin.

MTL-IO, per mini-batch::

    for k in tasks (fixed order; Pascal et al. 2022: classification, OD, OC, fovea):
        y_k = forward of task k's path at the CURRENT weights      # re-forward per task
        Adam_k.zero_grad(); L_k(y_k).backward(); Adam_k.step()

Adam_k owns exactly the parameters on task k's path (``model.path_parameters(k)``) and keeps its
own first and second moments, so the memory of each optimizer only mixes task k's past gradients:
w^(k) = w^(k-1) - lr * m_hat^(k)(g^(k)(w^(k-1))) (Pascal et al. 2022, Eq. 3). Parameters outside the path get
no gradient (None, not zero), hence no moment update and no weight decay from Adam_k.

``mtl_ius`` runs the same alternating schedule with ONE Adam over all parameters (its moments mix
the tasks), the ablation that isolates the effect of the independent moments.

Cost: T forwards and T backwards per mini-batch; one iteration is still one mini-batch.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch

from medmtl.models.base import MultiTaskNet
from medmtl.strategies.base import Batch, OptimizerFactory, StepContext, Strategy, task_order


class AlternatingUpdates(Strategy):
    """Shared logic: one forward/backward/step per task, in order, at the current weights."""

    supports_fp16_scaler = False

    def __init__(self, order: Sequence[str] | None = None):
        super().__init__()
        self.order = list(order) if order is not None else None

    @abc.abstractmethod
    def optimizer_for(self, ctx: StepContext, task: str) -> torch.optim.Optimizer:
        """The optimizer that applies task ``task``'s step."""

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        logged = {}
        for name in task_order(ctx.tasks, self.order):
            losses = ctx.losses(ctx.forward(batch, [name]), batch, [name])
            if name not in losses:
                continue  # no labelled sample of this task in the batch
            optimizer = self.optimizer_for(ctx, name)
            ctx.model.zero_grad(set_to_none=True)
            ctx.backward(losses[name])
            ctx.clip_gradients(optimizer)
            optimizer.step()
            logged[f"loss/{name}"] = losses[name].detach()
        return logged


class IndependentOptimizers(AlternatingUpdates):
    """``mtl_io``: one optimizer per task over that task's path."""

    def configure_optimizers(self, model: MultiTaskNet, optimizer_factory: OptimizerFactory) -> list[torch.optim.Optimizer]:
        self.optimizer_tasks = list(model.task_names)
        return [optimizer_factory(model.path_parameters(name)) for name in self.optimizer_tasks]

    def task_optimizer_index(self, task: str) -> int | None:
        return self.optimizer_tasks.index(task)

    def optimizer_for(self, ctx: StepContext, task: str) -> torch.optim.Optimizer:
        return ctx.optimizers()[self.optimizer_tasks.index(task)]


class SharedOptimizerAlternating(AlternatingUpdates):
    """``mtl_ius``: the alternating schedule with one optimizer shared by all tasks."""

    def optimizer_for(self, ctx: StepContext, task: str) -> torch.optim.Optimizer:
        (optimizer,) = ctx.optimizers()
        return optimizer
