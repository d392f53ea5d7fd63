"""``moco``: multi-objective gradient correction (Fernando et al. 2023, ICLR; Algorithm 1).

Stochastic MGDA is biased: the min-norm weights of one mini-batch's gradients are not those of the
full gradients. MoCo tracks each task's gradient and moves the weights by projected gradient steps
instead of solving the min-norm problem anew:

    y_k <- y_k - beta_t (y_k - g_k)                                (tracking, y_k = 0 at start)
    lambda <- Proj_simplex( lambda - gamma_t (Y^T Y + rho I) lambda )   (Y: the y_k as columns)
    shared update d = Y lambda

with beta_t = beta / t^beta_sigma and gamma_t = gamma / t^gamma_sigma (t: the iteration count)
and lambda = 1/T at start. Defaults beta = 0.5, gamma = 0.1, both sigmas 0.5, rho = 0 follow the
reference implementation the authors' experiments use. The update is a convex combination (the
scale of one gradient, not the sum of T as ``vanilla``). Each head receives its own task's
gradient.

With partial labels only the present tasks' y_k are tracked and only their weights take the step,
projected onto the simplex of the present tasks (the absent tasks' weights are kept for later).

Cost: T backward passes (as the Jacobian methods) and T x |W| memory for the y_k (a buffer:
checkpointed, so a resumed run is exact).
"""

from __future__ import annotations

import torch

from medmtl.strategies.base import Batch, StepContext
from medmtl.strategies.gradient_combination import gramian_of, task_jacobian
from medmtl.strategies.tracked_gradients import TrackedTaskGradients


def project_onto_simplex(vector: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto {x >= 0, sum x = 1} (the sort-based algorithm of Held, Wolfe and
    Crowder 1974, as in Duchi et al. 2008): x = max(v - theta, 0) with theta chosen so that x sums to 1.
    The support condition u_j - (sum_{i<=j} u_i - 1) / j > 0 holds on a prefix of the sorted u, so its
    size is the count of indices where it holds: no host read (the step never waits on a GPU)."""
    ordered, _ = torch.sort(vector, descending=True)
    cumulative = torch.cumsum(ordered, dim=0) - 1
    positions = torch.arange(1, vector.numel() + 1, device=vector.device, dtype=vector.dtype)
    support = (ordered - cumulative / positions > 0).sum().clamp_min(1)
    theta = cumulative.gather(0, (support - 1).reshape(1)) / support.to(vector.dtype)
    return (vector - theta).clamp_min(0)


class MultiObjectiveCorrection(TrackedTaskGradients):
    weights: torch.Tensor
    iterations: torch.Tensor

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        jacobian_method: str = "loop",
    ):
        super().__init__(jacobian_method)
        self.beta, self.beta_sigma = beta, beta_sigma
        self.gamma, self.gamma_sigma = gamma, gamma_sigma
        self.rho = rho

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        t = len(self.task_names)
        self.register_buffer("weights", torch.full((t,), 1.0 / t, dtype=torch.float64))
        self.register_buffer("iterations", torch.zeros((), dtype=torch.int64))

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        found = self.stacked_losses(ctx, batch)
        if found is None:
            return {}
        losses, names, stacked = found
        model = ctx.model
        shared = model.shared_parameters()
        jacobian = ctx.global_mean(task_jacobian(stacked, shared, self.jacobian_method).detach())
        index = self.task_index(names, jacobian.device)
        self.count_updates(index)
        self.iterations += 1
        t = self.iterations.to(torch.float64)  # on the module's device: no host read, no device mix
        tracked = self.track(jacobian, index, (1 - self.beta / t**self.beta_sigma).expand(len(names)))
        gramian = gramian_of(tracked).to(torch.float64)
        current = self.weights[index].to(torch.float64)  # the weights' own dtype follows the module's
        step = self.gamma / t**self.gamma_sigma
        updated = project_onto_simplex(
            current - step * (gramian + self.rho * torch.eye(len(names), dtype=gramian.dtype, device=gramian.device)) @ current
        )
        self.weights[index] = updated.to(self.weights.dtype)
        self.step(ctx, updated.to(tracked.dtype) @ tracked, stacked.sum(), names)
        logged = self.detached(losses) | {"loss/total": stacked.sum().detach()}
        return logged | {f"weight/{n}": w for n, w in zip(names, updated.float())}
