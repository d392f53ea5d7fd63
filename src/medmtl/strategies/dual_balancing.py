"""``db_mtl``: dual-balancing multi-task learning (Lin et al. 2023, "Dual-Balancing for
Multi-Task Learning").

Two balancing steps, one per cause of imbalance:

- loss scale: every task loss is replaced by its logarithm, log(L_k + eps), whose gradient
  g_k = grad L_k / (L_k + eps) does not change when L_k is multiplied by a constant;
- gradient magnitude: each task's gradient over the shared parameters is smoothed by an
  exponential moving average  gbar_k <- beta_t gbar_k + (1 - beta_t) g_k  with
  beta_t = beta / t^sigma (t: that task's update count; gbar starts at 0), and the shared update
  rescales every smoothed gradient to the largest norm:

      d = sum_k ( max_j ||gbar_j|| / ||gbar_k|| ) gbar_k.

Each head receives its own task's log-loss gradient. Defaults beta = 0.9, sigma = 0.5 are the
values of the authors' experiments; sigma = 0 gives a constant EMA rate. Tasks absent from a batch
keep their average and are left out of d.

Cost: T backward passes for the per-task gradients (as the Jacobian methods) and T x |W| extra
memory for the averages (a buffer: checkpoints keep it, so a resumed run is exact).
"""

from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext, Strategy
from medmtl.strategies.gradient_combination import JACOBIAN_METHODS, task_jacobian, write_flat_gradient


class DualBalancing(Strategy):
    gradient_average: torch.Tensor
    updates: torch.Tensor

    supports_fp16_scaler = False

    def __init__(self, beta: float = 0.9, sigma: float = 0.5, eps: float = 1e-8, jacobian_method: str = "loop"):
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"optim.strategy.beta must be in [0, 1), got {beta}.")
        if jacobian_method not in JACOBIAN_METHODS:
            raise ConfigError(f"optim.strategy.jacobian_method must be one of {JACOBIAN_METHODS}, got {jacobian_method!r}.")
        self.beta = beta
        self.sigma = sigma
        self.eps = eps
        self.jacobian_method = jacobian_method

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        # sized on the first step (the number of shared parameters is not known here)
        self.register_buffer("gradient_average", torch.zeros(0))
        self.register_buffer("updates", torch.zeros(len(self.task_names), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "gradient_average")
        if saved is not None:
            self.gradient_average = torch.zeros_like(saved, device=self.gradient_average.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        found = self.stacked_losses(ctx, batch)
        if found is None:
            return {}
        losses, names, stacked = found
        log_losses = torch.log(stacked + self.eps)
        model = ctx.model
        shared = model.shared_parameters()
        jacobian = task_jacobian(log_losses, shared, self.jacobian_method).detach()
        index = torch.tensor([self.task_names.index(n) for n in names], device=jacobian.device)
        if self.gradient_average.numel() == 0:
            self.gradient_average = jacobian.new_zeros(len(self.task_names), jacobian.shape[1])
        self.updates[index] += 1
        rate = (self.beta / self.updates[index].to(jacobian.dtype) ** self.sigma).unsqueeze(1)
        average = rate * self.gradient_average[index].to(jacobian.dtype) + (1 - rate) * jacobian
        self.gradient_average[index] = average.to(self.gradient_average.dtype)
        norms = average.norm(dim=1)
        scale = norms.max() / norms.clamp_min(self.eps)
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        write_flat_gradient(shared, scale @ average)
        ctx.backward(log_losses.sum(), inputs=[p for n in names for p in model.head_parameters(n)])
        ctx.clip_gradients(optimizer)
        optimizer.step()
        logged = self.detached(losses) | {"loss/total": log_losses.sum().detach()}
        return logged | {f"weight/{n}": w for n, w in zip(names, scale.float())}
