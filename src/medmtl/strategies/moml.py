"""``moml``: Multi-Objective Meta Learning (Ye et al. 2021) for multi-task learning, as LibMTL's
code (Lin & Zhang 2023) runs it: task weights learned by a bi-level, multi-objective step.

The network trains on sum_k s_k L_k with s = softmax(alpha); the logits alpha (a buffer, each
initialised at 1/T, so s starts uniform) take one step of their own Adam (``outer_lr``) per
iteration, on a direction found as follows. On an inner sample, one virtual SGD step of the network
(``inner_lr``) on the weighted loss:

    theta'(alpha) = theta - inner_lr sum_k s_k(alpha) g_k,      g_k = grad_theta L_k^inner(theta);

on an outer sample, each task's loss at theta' is an upper-level objective F_t, with the exact
gradient (theta' is linear in s, so no Hessian enters):

    d F_t / d alpha = -inner_lr  grad F_t(theta')^T  G^T  J_s,     G = [g_1 .. g_T],
    J_s = d s / d alpha = diag(s) - s s^T.

The T upper-level gradients are normalised (``normalization``: ``l2`` in LibMTL, dividing each by
its norm; ``none``) and combined at their min-norm convex combination (MGDA: Sener & Koltun 2018),
a common descent direction of every F_t, which is alpha's gradient. Then the network takes its
step on the whole batch with the new weights.

Samples: LibMTL draws the inner and the outer sample as two half-size batches and the network's
update from a third, full-size batch. Here the inner and outer samples are the two halves of the
batch and the update uses the whole batch (no sample is drawn twice from the loader; as our MoDo
and SDMGrad do): a documented deviation. LibMTL solves the min-norm problem with Sener & Koltun's
Frank-Wolfe iterations; ``solver: exact`` (default) solves it exactly, ``frank_wolfe`` is theirs.
The paper (Ye et al. 2021) states the method for any upper-level objectives; LibMTL's choice, the
training losses on another sample, is the one followed here. Tasks absent from the inner half get
no virtual-step term, tasks absent from the outer half no objective; with no objective the weights
do not move. The network's state (parameters and batch-norm statistics) is restored exactly after
the virtual step. Cost per iteration: 3 forwards, 2T + 1 backward passes, one copy of the network.
"""

from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext, batch_halves
from medmtl.strategies.bilevel import SoftmaxTaskWeights, add_flat_, flat_gradient, softmax_jacobian
from medmtl.strategies.mgda import SOLVERS, min_norm_weights

NORMALIZATIONS = ("l2", "none")


class MOML(SoftmaxTaskWeights):
    def __init__(self, inner_lr: float = 0.1, outer_lr: float = 1e-3, normalization: str = "l2", solver: str = "exact"):
        super().__init__(outer_lr)
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"optim.strategy.normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        if solver not in SOLVERS:
            raise ConfigError(f"optim.strategy.solver must be one of {SOLVERS}, got {solver!r}.")
        if not inner_lr > 0:
            raise ConfigError(f"optim.strategy.inner_lr must be positive, got {inner_lr!r}.")
        self.inner_lr = float(inner_lr)
        self.normalization = normalization
        self.solver = solver

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        inner, outer = batch_halves(ctx, batch, "moml")
        gradient = self.logit_gradient(ctx, inner, outer)
        # the logits never take a non-finite step (a NaN loss reaches the guard at the network's step)
        if gradient is not None and bool(torch.isfinite(gradient).all()):
            self.meta_optimizer.step(self.logits, gradient)
        return super().training_step(ctx, batch)

    def upper_level_gradients(self, ctx: StepContext, inner: Batch, outer: Batch) -> torch.Tensor | None:
        """The rows d F_t / d alpha (module docstring), one per task of the outer sample; the
        network's state is restored exactly. None when either sample labels no task."""
        model = ctx.model
        params = list(model.parameters())
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            found = self.stacked_losses(ctx, inner)
            if found is None:
                return None
            _, names, stacked = found
            inner_gradients = torch.stack([flat_gradient(ctx, loss, params) for loss in stacked])  # (T', d)
            s = self.weights().to(inner_gradients.dtype)
            present = self.present(names)
            add_flat_(params, s[present] @ inner_gradients, -self.inner_lr)
            outer_losses = ctx.losses(ctx.forward(outer), outer)
            if not outer_losses:
                return None
            jacobian = softmax_jacobian(s)[present]  # (T', T): d s_k / d alpha
            rows = [
                -self.inner_lr * (flat_gradient(ctx, loss, params) @ inner_gradients.T) @ jacobian
                for loss in outer_losses.values()
            ]
            return torch.stack(rows).detach()
        finally:
            model.load_state_dict(saved)

    def logit_gradient(self, ctx: StepContext, inner: Batch, outer: Batch) -> torch.Tensor | None:
        """alpha's gradient: the min-norm convex combination of the normalised upper-level rows."""
        rows = self.upper_level_gradients(ctx, inner, outer)
        if rows is None:
            return None
        rows = rows.double()
        if not bool(torch.isfinite(rows).all()):
            return torch.full((rows.shape[1],), float("nan"), dtype=rows.dtype)  # no solve on NaN (a NaN loss)
        if self.normalization == "l2":
            rows = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1e-30)
        combination = min_norm_weights(rows @ rows.T, solver=self.solver)
        return combination.to(rows) @ rows
