"""``forum``: FORUM (Ye et al. 2024, ECAI), a first-order multi-gradient method for multi-objective
bi-level optimisation, as LibMTL's code (Lin & Zhang 2023) runs it for multi-task learning.

Lower level: the weighted training loss f(alpha, theta) = sum_k s_k L_k^inner(theta),
s = softmax(alpha). Upper level: the task losses F_t(theta) on another sample (outer). FORUM
replaces the lower-level problem by the constraint q(alpha, theta) = f(alpha, theta) -
f(alpha, theta_N(alpha)) <= 0, with theta_N the network after ``inner_steps`` SGD steps
(``inner_lr``) on f from theta, and takes one step of (alpha, theta) along

    d = sum_t lambda_t g_t + nu grad q,      g_t = (0, grad_theta F_t / ||grad_theta F_t||),
    grad q = (grad_alpha f(alpha, theta) - grad_alpha f(alpha, theta_N),  grad_theta f(alpha, theta)),

where the weights come from a quadratic programme over w = (w_1 .. w_T, w_q) >= 0:

    min_w || sum_t w_t g_t + w_q grad q ||^2 - w_q phi ||grad q||^2
    s.t.  sum_t w_t = 1,   w_q >= sum_t w_t pi_t,   pi_t = phi - <grad q, g_t> / ||grad q||^2

(``phi`` 0.1), smoothed over iterations, lambda <- lambda + (w - lambda) / (e + 1)^(3/4) with e the
epoch index (lambda starts at 0), and nu = max(sum_t lambda_t pi_t, 0). grad_alpha f = (diag(s) -
s s^T) L. The network's optimizer steps theta along d's theta part; the logits' own Adam
(``outer_lr``) along its alpha part. (||grad q||^2 and the pi_t carry LibMTL's 1e-8.)

As in LibMTL: the QP is solved by cvxpy (LibMTL writes the objective through the eigen-square-root
of the Gram matrix; here the same quadratic form directly), the inner steps stop early when f exceeds
1e5, and the network is not trained on sum_k s_k L_k itself but along d. Samples: LibMTL draws the
inner and outer samples as two half-size batches; here they are the batch's two halves. Tasks absent
from the outer half have no objective (their lambda keeps its value); tasks absent from the inner
half no lower-level term. The network's state is restored exactly after the inner steps. Cost per
iteration: 2 + ``inner_steps`` + 1 forwards and as many backward passes, T of them for the outer
gradients; one copy of the network's state and (T + 1) x (all parameters).
"""

from __future__ import annotations

from typing import Any

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext, batch_halves
from medmtl.strategies.bilevel import SoftmaxTaskWeights, add_flat_, flat_gradient
from medmtl.strategies.gradient_combination import write_flat_gradient


def forum_weights(gram: torch.Tensor, pi: torch.Tensor, reward: float) -> torch.Tensor:
    """argmin_w w^T gram w - w_q reward over w = (w_1 .. w_T, w_q) >= 0, sum_t w_t = 1,
    w_q >= sum_t w_t pi_t (``gram``: the (T+1) x (T+1) Gram matrix of (g_1 .. g_T, grad q)), by cvxpy."""
    import cvxpy as cp
    import numpy as np

    t = pi.numel()
    matrix = gram.detach().double().cpu().numpy()
    matrix = (matrix + matrix.T) / 2
    w = cp.Variable(t + 1, nonneg=True)
    constraints = [cp.sum(w[:t]) == 1, w[t] >= pi.detach().double().cpu().numpy() @ w[:t]]
    problem = cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(matrix)) - reward * w[t]), constraints)
    problem.solve()
    if w.value is None:
        raise RuntimeError(f"FORUM's quadratic programme has no solution ({problem.status}).")
    return torch.as_tensor(np.asarray(w.value), dtype=torch.float64)


class FORUM(SoftmaxTaskWeights):
    lambdas: torch.Tensor
    epoch: torch.Tensor

    def __init__(self, phi: float = 0.1, inner_lr: float = 0.1, inner_steps: int = 5, outer_lr: float = 1e-3):
        super().__init__(outer_lr)
        if not phi > 0:
            raise ConfigError(f"optim.strategy.phi must be positive, got {phi!r}.")
        if not inner_lr > 0:
            raise ConfigError(f"optim.strategy.inner_lr must be positive, got {inner_lr!r}.")
        if not (isinstance(inner_steps, int) and inner_steps >= 1):
            raise ConfigError(f"optim.strategy.inner_steps must be an integer >= 1, got {inner_steps!r}.")
        self.phi, self.inner_lr, self.inner_steps = float(phi), float(inner_lr), inner_steps

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.register_buffer("lambdas", torch.zeros(len(self.task_names), dtype=torch.float64))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def on_train_epoch_end(self, epoch: int) -> None:
        self.epoch.fill_(epoch + 1)

    def weights_to_log(self) -> dict[str, Any]:
        return super().weights_to_log() | {f"lambda/{k}": v for k, v in zip(self.task_names, self.lambdas.float())}

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        inner, outer = batch_halves(ctx, batch, "forum")
        direction = self.direction(ctx, inner, outer)
        if direction is None:
            return {}
        logits_part, network_part, losses = direction
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        params = list(ctx.model.parameters())
        write_flat_gradient(params, network_part)
        ctx.mark_global(params)
        ctx.clip_gradients(optimizer)
        optimizer.step()
        if bool(torch.isfinite(logits_part).all()):  # the logits never take a non-finite step
            self.meta_optimizer.step(self.logits, logits_part)
        return self.detached(losses)

    def inner_gradient_of_alpha(self, ctx: StepContext, inner: Batch, names: list[str]) -> torch.Tensor:
        """grad_alpha f(alpha, theta_N): ``inner_steps`` SGD steps on f from the current weights
        (which the caller restores), then (diag(s) - s s^T) L(theta_N)."""
        params = list(ctx.model.parameters())
        for _ in range(self.inner_steps):
            total = self.weighted_total(ctx.losses(ctx.forward(inner), inner, names))
            if float(total.detach()) > 1e5:  # LibMTL: a too large inner_lr or inner_steps diverged; stop there
                break
            add_flat_(params, flat_gradient(ctx, total, params), -self.inner_lr)
        with torch.no_grad():
            return self.alpha_gradient(ctx.losses(ctx.forward(inner), inner, names))

    def direction(
        self, ctx: StepContext, inner: Batch, outer: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] | None:
        """(alpha's part, theta's part) of d, and the inner losses; None when the inner or the
        outer half labels no task. Updates lambda."""
        model = ctx.model
        params = list(model.parameters())
        found = self.stacked_losses(ctx, inner)
        if found is None:
            return None
        losses, names, _ = found
        grad_theta_f = flat_gradient(ctx, self.weighted_total(losses), params).detach().double()
        grad_alpha_f = self.alpha_gradient(losses)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            grad_alpha_f_inner = self.inner_gradient_of_alpha(ctx, inner, names)
        finally:
            model.load_state_dict(saved)
        grad_q = torch.cat([grad_alpha_f - grad_alpha_f_inner, grad_theta_f])
        outer_losses = ctx.losses(ctx.forward(outer), outer)
        if not outer_losses:
            return None
        objectives = list(outer_losses)
        rows = []
        for name in objectives:
            g = flat_gradient(ctx, outer_losses[name], params).detach().double()
            rows.append(torch.cat([torch.zeros_like(grad_alpha_f), g / torch.linalg.vector_norm(g).clamp_min(1e-30)]))
        g_upper = torch.stack(rows)  # (T', T + d)
        q_norm = float(grad_q @ grad_q) + 1e-8
        pi = self.phi - (g_upper @ grad_q) / q_norm
        a = torch.cat([g_upper, grad_q.unsqueeze(0)])
        gram = a @ a.T
        t = len(self.task_names)
        if not bool(torch.isfinite(gram).all() and torch.isfinite(pi).all()):
            # a non-finite loss: no QP (cvxpy refuses NaN), lambda kept; the NaN direction reaches the
            # non-finite guard at the network's step (stop: one sentence; skip: the update dropped)
            return torch.full((t,), float("nan"), dtype=a.dtype), torch.full_like(grad_theta_f, float("nan")), losses
        w = forum_weights(gram, pi, self.phi * q_norm)
        index = self.present(objectives)
        step = 1.0 / (int(self.epoch) + 1) ** 0.75
        self.lambdas[index] += step * (w[: len(objectives)].to(self.lambdas) - self.lambdas[index])
        lambdas = self.lambdas[index].to(pi)
        nu = max(float(lambdas @ pi), 0.0)
        d = lambdas @ g_upper + nu * grad_q
        return d[:t], d[t:], losses
