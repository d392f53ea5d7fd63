"""``auto_lambda``: Auto-Lambda (Liu, Johns, Davison 2022, TMLR), task weights learned by a
one-step look-ahead on validation data.

The task weights lambda (a buffer, initialised at ``init``) weight the training loss
sum_k lambda_k L_k. Before each training iteration they take one step of their own Adam
(``meta_lr``) on the gradient of the primary tasks' validation loss after a virtual SGD step:

    theta' = theta - alpha (mu b + grad_theta sum_k lambda_k L_k^train(theta) + wd theta)
    d/dlambda_k L^val(theta') = -alpha grad_theta' L^val(theta') . grad_theta L_k^train(theta)
                              ~ -alpha (L_k^train(theta+) - L_k^train(theta-)) / (2 eps),
    theta+- = theta +- eps grad_theta' L^val(theta'),  eps = ``finite_difference`` / ||grad L^val||

(the finite-difference Hessian-vector product of the paper, as in DARTS). alpha is the network
optimizer's current learning rate (``virtual_lr`` to set it) and wd its weight decay. mu b is the
momentum the network's SGD would add: its momentum mu times its momentum buffer b (zero before the
first step and for optimizers without one, Adam among them). The paper writes the plain step
theta - alpha grad; the authors' code, which gave the paper's numbers (SGD with momentum 0.9),
adds mu b and wd theta, and so does this one by default; ``virtual_momentum: false`` leaves mu b out.
``primary``: the tasks whose validation loss is minimised; null = every task (the paper's
multi-task mode), a subset = its auxiliary mode, where the other tasks only help the primary ones
(the medical setting of a primary diagnosis with auxiliary segmentations). Defaults (init 0.1,
meta_lr 1e-4, eps 0.01) are the authors' code's.

Validation batches come from an endless stream over the validation loader
(:data:`~medmtl.data.task_streams.VALIDATION`, checkpointed like GA's task streams); the virtual
and finite-difference passes run on the network in place and restore its state (parameters and
batch-norm statistics) exactly afterwards. Tasks absent from the training batch get no weight
gradient; a validation batch without a primary task skips the weight step. Cost per iteration:
5 forward and 3 backward passes (virtual step, validation gradient, two finite-difference
forwards, the training step) and one copy of the network's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext
from medmtl.strategies.own_optimizer import OwnOptimizer
from medmtl.strategies.weighted_sum import WeightedSum
from medmtl.tasks import VALIDATION


class AutoLambda(WeightedSum):
    weights: torch.Tensor

    supports_fp16_scaler = False
    uses_validation_batches = True

    def __init__(
        self,
        primary: Sequence[str] | None = None,
        init: float = 0.1,
        meta_lr: float = 1e-4,
        virtual_lr: float | None = None,
        finite_difference: float = 0.01,
        virtual_momentum: bool = True,
    ):
        super().__init__()
        self.primary = None if primary is None else list(primary)
        self.init = init
        self.virtual_lr = virtual_lr
        self.finite_difference = finite_difference
        self.virtual_momentum = virtual_momentum
        self.meta_optimizer = OwnOptimizer(lambda params: torch.optim.Adam(params, lr=meta_lr))

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        unknown = sorted(set(self.primary or []) - set(self.task_names))
        if unknown:
            raise ConfigError(f"optim.strategy.primary names tasks {unknown} not in the task set {self.task_names}.")
        self.register_buffer("weights", torch.full((len(self.task_names),), float(self.init)))

    def get_extra_state(self) -> dict[str, Any]:
        return self.meta_optimizer.state_dict()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.meta_optimizer.load_state_dict(state)

    def weighted_total(self, losses):
        return self.combine(self.weights, losses)

    def weights_to_log(self):
        return self.weights_by_task(self.weights)

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        self.update_weights(ctx, batch, ctx.task_batch(VALIDATION))
        return super().training_step(ctx, batch)

    def update_weights(self, ctx: StepContext, batch: Batch, validation: Batch) -> None:
        """One step of lambda's Adam on the hypergradient (none when it cannot be computed)."""
        hypergradient = self.hypergradient(ctx, batch, validation)
        if hypergradient is not None:
            self.meta_optimizer.step(self.weights, hypergradient)

    def momentum_terms(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[torch.Tensor | float]:
        """mu b per parameter: the momentum term of the network's SGD (0 without one)."""
        momentum = float(optimizer.param_groups[0].get("momentum", 0.0) or 0.0)
        if not self.virtual_momentum or momentum == 0.0:
            return [0.0] * len(params)
        buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
        return [0.0 if b is None else momentum * b for b in buffers]

    def hypergradient(self, ctx: StepContext, batch: Batch, validation: Batch) -> torch.Tensor | None:
        """d L^val(theta') / d lambda by finite differences (module docstring); the network's state
        is restored exactly. None when the batch or the validation batch labels no needed task."""
        model = ctx.model
        params = list(model.parameters())
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        found = self.stacked_losses(ctx, batch)
        if found is None:
            model.load_state_dict(saved)
            return None
        _, names, stacked = found
        index = torch.tensor([self.task_names.index(n) for n in names], device=self.weights.device)
        optimizer = getattr(ctx.optimizers()[0], "optimizer", ctx.optimizers()[0])
        group = optimizer.param_groups[0]
        alpha = float(self.virtual_lr if self.virtual_lr is not None else group["lr"])
        decay = float(group.get("weight_decay", 0.0))
        total = (self.weights[index].to(stacked.dtype) * stacked).sum()
        gradients = ctx.gradients(total, params)
        with torch.no_grad():
            for p, g, m in zip(params, gradients, self.momentum_terms(optimizer, params)):
                p.sub_(alpha * (m + g + decay * p))
        primary = list(self.primary or self.task_names)
        validation_losses = ctx.losses(ctx.forward(validation), validation, primary)
        if not validation_losses:
            model.load_state_dict(saved)
            return None
        direction = ctx.gradients(torch.stack(list(validation_losses.values())).sum(), params)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d.double()) for d in direction]))
        eps = self.finite_difference / float(norm.clamp_min(1e-12))
        shifted = []
        for sign in (1.0, -1.0):
            model.load_state_dict(saved)
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.add_(sign * eps * d)
                losses = ctx.losses(ctx.forward(batch, names), batch, names)
                shifted.append(torch.stack([losses[n] for n in names]).double())
        model.load_state_dict(saved)
        hypergradient = torch.zeros_like(self.weights, dtype=torch.float64)
        hypergradient[index] = -alpha * (shifted[0] - shifted[1]) / (2 * eps)
        return hypergradient
