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

Each head receives its own task's log-loss gradient. Defaults beta = 0.9, sigma = 0 (a constant
EMA rate) are those of the authors' own implementation (LibMTL's ``DB_beta``, ``DB_beta_sigma``);
sigma = 0.5, a rate decaying as 1/sqrt(t), is an option (it is MoCo's decay, not DB-MTL's). Tasks absent from a batch
keep their average and are left out of d.

Cost: T backward passes for the per-task gradients (as the Jacobian methods) and T x |W| extra
memory for the averages (:class:`~medmtl.strategies.tracked_gradients.TrackedTaskGradients`: a
buffer, so a resumed run is exact).
"""

from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext
from medmtl.strategies.gradient_combination import task_jacobian
from medmtl.strategies.tracked_gradients import TrackedTaskGradients


class DualBalancing(TrackedTaskGradients):
    def __init__(self, beta: float = 0.9, sigma: float = 0.0, eps: float = 1e-8, jacobian_method: str = "loop"):
        super().__init__(jacobian_method)
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"optim.strategy.beta must be in [0, 1), got {beta}.")
        self.beta = beta
        self.sigma = sigma
        self.eps = eps

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        found = self.stacked_losses(ctx, batch)
        if found is None:
            return {}
        losses, names, stacked = found
        log_losses = torch.log(stacked + self.eps)
        model = ctx.model
        shared = model.shared_parameters()
        jacobian = ctx.global_mean(task_jacobian(log_losses, shared, self.jacobian_method).detach())
        index = self.task_index(names, jacobian.device)
        steps = self.count_updates(index).to(jacobian.dtype)
        average = self.track(jacobian, index, self.beta / steps**self.sigma)
        norms = average.norm(dim=1)
        scale = norms.max() / norms.clamp_min(self.eps)
        self.step(ctx, scale @ average, log_losses.sum(), names)
        logged = self.detached(losses) | {"loss/total": log_losses.sum().detach()}
        return logged | {f"weight/{n}": w for n, w in zip(names, scale.float())}
