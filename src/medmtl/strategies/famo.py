"""``famo``: fast adaptive multitask optimisation (Liu et al. 2023, NeurIPS; Algorithm 1).

Task logits xi (initialised at 0) give weights z = softmax(xi). One iteration:

1. the network update direction is d = sum_k c z_k / L_k(theta_t) grad L_k, with
   c = (sum_k z_k / L_k)^{-1}: one backward of sum_k (z_k / c) log L_k, z and c held constant;
   the network's optimizer steps;
2. one extra forward (no backward) on the same batch at the updated weights theta_{t+1} gives the
   log-loss decrease delta_k = log L_k(theta_t) - log L_k(theta_{t+1});
3. the logits move against the weighted decrease: xi <- xi - beta (d(z^T delta)/d(xi) + gamma xi),
   with d(z^T delta)/dxi = z * (delta - z^T delta), so that tasks whose loss dropped least gain
   weight.

``logit_optimizer``: ``adam`` (default; the authors' code updates xi with Adam(lr=beta,
weight_decay=gamma), the setting of the paper's results) or ``sgd`` (the plain step of Algorithm 1
written above). Defaults beta = 0.025, gamma = 0.01 are the authors'.

``max_norm`` (default 1.0): the gradient of the shared parameters is clipped to this global norm
before the network's step, as in the authors' code for every experiment of the paper (their
``max_norm`` argument, 1.0); Algorithm 1 as printed does not clip (``max_norm: 0``). The heads'
gradients are not clipped. With clipping, the 16-bit gradient scaler is refused (clipping a scaled
gradient would clip the wrong norm): use bf16.

Cost: one forward and one backward as ``vanilla`` plus one forward without graph; memory O(T).
The extra forward runs in training mode (as the authors' code): batch-norm layers see the batch a
second time in their running statistics. Tasks absent from a batch are left out of z (softmax
over the present tasks' logits) and of the logit gradient; weight decay still shrinks every logit.
The logits are a buffer and their optimizer's state is in the strategy's extra state, so a resumed
run continues the same weights; the logit optimizer follows no learning-rate schedule.
"""

from __future__ import annotations

from typing import Any

import torch

from medmtl.errors import ConfigError
from medmtl.models.base import MultiTaskNet
from medmtl.strategies.base import Batch, OptimizerFactory, StepContext, Strategy, clip_shared_gradients
from medmtl.strategies.own_optimizer import OwnOptimizer

LOGIT_OPTIMIZERS = ("adam", "sgd")


class FastAdaptiveMultitask(Strategy):
    logits: torch.Tensor
    supports_fp16_scaler = True

    def __init__(
        self, beta: float = 0.025, gamma: float = 0.01, logit_optimizer: str = "adam", eps: float = 1e-8, max_norm: float = 1.0
    ):
        super().__init__()
        if max_norm < 0:
            raise ConfigError(f"optim.strategy.max_norm must be >= 0 (0: no clipping), got {max_norm}.")
        self.max_norm = max_norm
        self.supports_fp16_scaler = max_norm == 0
        if logit_optimizer not in LOGIT_OPTIMIZERS:
            raise ConfigError(f"optim.strategy.logit_optimizer must be one of {LOGIT_OPTIMIZERS}, got {logit_optimizer!r}.")
        if beta <= 0:
            raise ConfigError(f"optim.strategy.beta (the logits' step size) must be positive, got {beta}.")
        self.beta = beta
        self.gamma = gamma
        self.logit_optimizer = logit_optimizer
        self.eps = eps
        kind = torch.optim.Adam if logit_optimizer == "adam" else torch.optim.SGD
        self.logit_optimizer_state = OwnOptimizer(lambda params: kind(params, lr=beta, weight_decay=gamma))

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        self.register_buffer("logits", torch.zeros(len(self.task_names)))

    def configure_optimizers(self, model: MultiTaskNet, optimizer_factory: OptimizerFactory):
        return [optimizer_factory(list(model.parameters()))]

    def get_extra_state(self) -> dict[str, Any]:
        return self.logit_optimizer_state.state_dict()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.logit_optimizer_state.load_state_dict(state)

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        found = self.stacked_losses(ctx, batch)
        if found is None:
            return {}
        losses, names, stacked = found
        index = torch.tensor([self.task_names.index(n) for n in names], device=self.logits.device)
        z = torch.softmax(self.logits[index], dim=0)
        before = stacked.detach().float() + self.eps
        inverse_c = (z / before).sum()
        weights = (z / inverse_c).to(stacked.dtype)
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        total = (weights * torch.log(stacked + self.eps)).sum()
        ctx.backward(total)
        ctx.clip_gradients(optimizer)
        clip_shared_gradients(ctx.model, self.max_norm)
        optimizer.step()
        with torch.no_grad():
            after_losses = ctx.losses(ctx.forward(batch, names), batch, names)
            after = torch.stack([after_losses[n] for n in names]).float() + self.eps
        self.update_logits(index, torch.log(before) - torch.log(after))
        logged = self.detached(losses) | {"loss/total": stacked.sum().detach()}
        return logged | {f"weight/{n}": w for n, w in zip(names, (weights / before.to(weights)).detach().float())}

    def update_logits(self, index: torch.Tensor, delta: torch.Tensor) -> None:
        """One step of the logits on d(z^T delta)/dxi (zero for the absent tasks)."""
        z = torch.softmax(self.logits[index].float(), dim=0)
        gradient = torch.zeros_like(self.logits)
        gradient[index] = (z * (delta - (z * delta).sum())).to(gradient)
        self.logit_optimizer_state.step(self.logits, gradient)
