"""``gradnorm`` (Chen et al. 2018; Pascal et al. 2022's baseline; docs/methods.md).

Task weights w_k (initialised at 1) are learnable. With W the last layer shared by all tasks
(``model.last_shared_layer()``; for the REFUGE U-Net the last encoder convolution):

    G_k = || d(w_k L_k) / dW ||_2 = |w_k| || dL_k/dW ||_2,   Gbar = mean_k G_k
    Ltilde_k = L_k(t) / L_k(0),  r_k = Ltilde_k / mean_j Ltilde_j
    target_k = Gbar r_k^alpha   (a constant: no gradient flows through it), alpha = 1.5
    L_grad = sum_k |G_k - target_k|

The network's gradient comes from sum_k w_k L_k with w held constant; the weights' gradient is
dL_grad/dw ONLY. Writing G_k = w_k ||dL_k/dW|| with the norm computed without a graph makes this
exact and leaves no second-order term anywhere (the bug of implementations that back-propagate
L_grad with ``create_graph=True`` into the network's ``.grad``). After the optimizer step the
weights are kept positive and renormalised to sum to T, as Chen et al. (2018) intend:
w <- T max(w, w_min) / sum_j max(w_j, w_min), ``min_weight`` w_min (1e-3 by default). Without it a
weight pushed below zero flips the sign of its own gradient (d|w_k| n_k / dw_k) and the weights
drift apart. LibMTL keeps them positive differently, as w = T softmax(s) with learnable s: its
updates differ from the paper's renormalised ones (docs/methods.md). L_k(0) is each task's loss at its first iteration (a buffer:
checkpoints keep it). The per-task norms come from one batched backward to W.

The weights share the network's optimizer; ``weights_lr`` gives them their own learning rate (a
second parameter group of the same optimizer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.base import MultiTaskNet
from medmtl.strategies.base import Batch, OptimizerFactory, StepContext, Strategy
from medmtl.strategies.gradient_combination import task_jacobian


class GradNorm(Strategy):
    initial_losses: torch.Tensor

    supports_fp16_scaler = False
    reuses_forward_graph = True

    def __init__(self, alpha: float = 1.5, weights_lr: float | None = None, min_weight: float = 1e-3):
        super().__init__()
        if not min_weight > 0:
            raise ConfigError(f"optim.strategy.min_weight must be positive (the weights are kept above it), got {min_weight}.")
        self.alpha = alpha
        self.weights_lr = weights_lr
        self.min_weight = min_weight

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        t = len(self.task_names)
        self.task_weights = nn.Parameter(torch.ones(t))
        self.register_buffer("initial_losses", torch.full((t,), float("nan")))

    def configure_optimizers(self, model: MultiTaskNet, optimizer_factory: OptimizerFactory):
        if self.weights_lr is None:
            return [optimizer_factory(list(model.parameters()) + [self.task_weights])]
        groups: list[dict[str, Any]] = [
            {"params": list(model.parameters())},
            {"params": [self.task_weights], "lr": self.weights_lr},
        ]
        return [optimizer_factory(groups)]

    def weight_gradient(self, losses: torch.Tensor, gradient_norms: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """dL_grad/dw for the present tasks ``index`` (zeros elsewhere)."""
        weights = self.task_weights[index]
        g = weights.abs() * gradient_norms
        relative = losses / self.initial_losses[index].to(losses)
        ratio = relative / relative.mean()
        target = (g.mean() * ratio**self.alpha).detach()
        l_grad = (g - target).abs().sum()
        (grad,) = torch.autograd.grad(l_grad, self.task_weights)
        return grad

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        found = self.stacked_losses(ctx, batch)
        if found is None:
            return {}
        losses, names, stacked = found
        index = torch.tensor([self.task_names.index(n) for n in names], device=self.task_weights.device)
        with torch.no_grad():
            unset = torch.isnan(self.initial_losses[index])
            self.initial_losses[index[unset]] = stacked.detach()[unset].to(self.initial_losses)
        layer = ctx.model.last_shared_layer()
        norms = ctx.global_mean(task_jacobian(stacked, [layer]).detach()).norm(dim=1)
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        weights = self.task_weights[index].detach().to(stacked.dtype)
        ctx.backward((weights * stacked).sum())
        self.task_weights.grad = self.weight_gradient(stacked.detach(), norms.to(self.task_weights), index)
        ctx.clip_gradients(optimizer)
        optimizer.step()
        with torch.no_grad():
            self.task_weights.clamp_(min=self.min_weight)
            self.task_weights.mul_(len(self.task_names) / self.task_weights.sum())
        logged = self.detached(losses) | {"loss/total": stacked.sum().detach()}
        return logged | {f"weight/{n}": w for n, w in zip(self.task_names, self.task_weights.detach())}
