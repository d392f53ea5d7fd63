"""``bayesagg_mtl``: Bayesian uncertainty-based gradient aggregation (Achituve, Diamant, Netzer,
Chechik and Fetaya 2024, BayesAgg-MTL), as the authors' code computes it.

The network is a shared encoder whose last output is one vector h (N, D) per sample, read by
every task through one linear layer (``model.readout_layer(k)``: weight W_k, bias b_k; no dropout
between them). Each task's last layer gets a Gaussian posterior; the gradient of task k's
per-sample loss with respect to h, g_k = dl_k/dh, is then a random variable whose mean and
variance are taken over that posterior, and the shared gradient combines the tasks' means by their
precisions. One iteration, after a warm-up:

    theta_k = [W_k, b_k]                        flattened by rows (every output: D weights, 1 bias)
    x_i = [h_i, 1]                              the sample's features with the bias input
    Laplace (GGN) posterior around theta_k, the batch B's labelled samples, prior N(m0, P0):
        Lambda = sum_{i in B} J_i^T H_i J_i + P0            H_i = d2 l / d logits2 at theta_k
        mean   = theta_k - Lambda^{-1} (sum_{i in B} d l_i / d theta + P0 (theta_k - m0))
      binary outputs (``binary`` tasks, each output of a ``multilabel`` task): H_i = p(1 - p)
      per output, independent outputs (their code drops the mixed second derivatives), so one
      (D + 1) block per output, all binary outputs of all tasks in one group (:class:`Group`);
      ``multiclass``: H_i = diag(p) - p p^T, one C (D + 1) block.
    prior (m0, P0): the full-data posterior, the same Laplace step over every training sample
      of the previous epoch (their features as computed then, kept during that epoch) around the
      current theta_k, with prior N(0, gamma I); recomputed at each epoch's first step.
    moments: S draws theta^s from the batch posterior (``mc_samples``, 1024 in their code),
        g^s_ik = W^s^T (sigma(W^s h_i + b^s) - y_i)          (softmax - one-hot for multiclass;
                                                               each binary output its own g)
        mu_ik  = mean_s g^s_ik,   v_ik = max(mean_s (g^s_ik)^2 - mu_ik^2, 1e-8) ** ``variance_power``
    aggregation (element-wise over D; the tasks r labelled for sample i):
        dL/dh_i = (sum_r mu_ir / v_ir) / (sum_r 1 / v_ir) / |B|
    one update: the shared parameters get dL/dh back-propagated from h, each head the gradient of
    its own (mean) loss; heads clipped to a global norm of ``head_clip``, the shared parameters
    (after the warm-up) to ``shared_clip`` (0: no clipping).

During the ``warmup_epochs`` first epochs the update is the plain sum of the losses (their
``ls_epochs``); their features are kept all the same, so that the first epoch after the warm-up
has a full-data posterior. The defaults are their ChestX-ray14 script's (binary tasks, like
EMOTIC's categories): gamma 0.005, variance power 0.0005, 1 warm-up epoch, head clip 50, no shared
clip; their UTKFace script (regression and multiclass) uses variance power 0.1 for the
classification tasks, 10 warm-up epochs and clips 10 / 5; CIFAR-MTL gamma 0.0005 and 3 warm-up
epochs.

Regression outputs (a ``regression`` task trained with :func:`medmtl.losses.squared_error`, each
output its own task): their posterior is exact Bayesian linear regression of y on h with unit
noise and no bias (Lambda = P0 + sum_i h_i h_i^T, mean = Lambda^{-1} (P0 m0 + sum_i h_i y_i); the
same full-data prior), and the moments of g = 2 (w.h - y) w are exact (:func:`regression_moments`),
their variance raised to ``regression_variance_power`` (their ``sqrt_power``: UTKFace 0.3).
Not built: their UTKFace evaluation's replacement of the regression head by the full-data
posterior mean. A ``multilabel`` task's outputs are aggregated as separate binary tasks (their
binary-task group) while its own head follows our mean over the labels. Each task's share of the
aggregation (:func:`precision_shares`) is logged as ``weight/<task>``.

Partial labels: a task's posterior sums run over the samples labelled for it, a sample's
aggregation over the tasks it is labelled for (a sample labelled for none gets no shared
gradient); |B| counts every sample of the batch, as their code. Under DDP every sum over samples
is reduced (``ctx.global_sum``), the posterior draws are rank 0's (``ctx.agree``) and |B| is the
union's, so the update equals one process's on the union batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmtl import losses as task_losses
from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext, Strategy
from medmtl.tasks import Task

#: the losses whose curvature and gradient the posterior and the moments write out, per task kind
SUPPORTED_LOSSES = {
    "regression": task_losses.squared_error,
    "binary": task_losses.binary_cross_entropy,
    "multilabel": task_losses.multilabel_bce,
    "multiclass": task_losses.cross_entropy,
}
#: samples of the features per chunk when summing the curvature over a whole epoch
CHUNK = 4096


def safe_cholesky(matrix: torch.Tensor, tries: int = 25) -> torch.Tensor:
    """Cholesky factor of a symmetric positive (semi-)definite batch, adding a diagonal jitter of
    1e-7 (float32; 1e-9 in float64) times 10^i to the failing matrices until it succeeds."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    jitter = 1e-7 if matrix.dtype == torch.float32 else 1e-9
    added = torch.zeros(matrix.shape[:-2], dtype=matrix.dtype, device=matrix.device)
    for i in range(tries):
        if not bool(info.any()):
            return factor
        step = jitter * 10**i
        bump = torch.where(info > 0, step - added, torch.zeros_like(added))
        added = added + bump
        matrix = matrix + bump[..., None, None] * torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
        factor, info = torch.linalg.cholesky_ex(matrix)
    if bool(info.any()):
        raise FloatingPointError(
            f"bayesagg_mtl: a posterior precision is not positive definite even with a jitter of {step:.0e}."
        )
    return factor


@dataclass
class Posterior:
    """A Gaussian over a task's last layer in G independent blocks of M parameters: ``mean``
    (G, M), ``precision`` (G, M, M) and ``scale_tril`` (the covariance's Cholesky factor)."""

    mean: torch.Tensor
    precision: torch.Tensor
    scale_tril: torch.Tensor

    def sample(self, count: int) -> torch.Tensor:
        """(count, G, M) draws mean + L eps, eps standard normal drawn as ``MultivariateNormal``
        draws it (the same numbers for the same generator state), without its batched product,
        which copies L once per draw (G x M x M x count numbers)."""
        eps = torch.empty((count, *self.mean.shape), dtype=self.mean.dtype, device=self.mean.device).normal_()
        return self.mean + torch.einsum("gij,sgj->sgi", self.scale_tril, eps)

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "precision": self.precision, "scale_tril": self.scale_tril}


def with_bias_input(features: torch.Tensor) -> torch.Tensor:
    """x = [h, 1]: (N, D) -> (N, D + 1)."""
    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


def layer_blocks(kind: str, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """theta in blocks: binary outputs one block [w_o, b_o] each (O, D + 1); multiclass one block
    of the C x (D + 1) matrix [W, b] flattened by rows (1, C (D + 1)); regression outputs one
    block w_o each (O, D): their regression posterior leaves the bias out."""
    if kind == "regression":
        return weight
    stacked = torch.cat([weight, bias[:, None]], dim=1)
    return stacked[None].flatten(1) if kind == "multiclass" else stacked


def curvature(
    kind: str, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i J_i^T H_i J_i, sum_i dl_i/dtheta) over the rows of x (N, D + 1), at theta (blocks
    of :func:`layer_blocks`); y: (N, O) in {0, 1} for binary outputs, (N,) class indices.
    Regression (x = h, (N, D); y (N, O)): the Gaussian likelihood of unit noise, l = (w h - y)^2 / 2,
    whose Newton step from any theta is the exact Bayesian linear regression posterior.
    ``labelled`` (N, O) (multiclass: (N, 1)): which samples count for which output (all by default)."""
    blocks, size = theta.shape
    width = x.shape[1]
    rows = 1 if kind == "multiclass" else blocks
    weight = x.new_ones(x.shape[0], rows) if labelled is None else labelled.to(x.dtype)
    if kind == "regression":
        gram = torch.einsum("no,nd,ne->ode", weight, x, x)
        return gram, torch.einsum("od,ode->oe", theta, gram) - (weight * y.to(x.dtype)).T @ x
    if kind == "multiclass":
        classes = size // width
        w = theta.view(classes, width)
        ggn = x.new_zeros(classes, classes, width, width)
        grad = x.new_zeros(classes, width)
        for part, target, counted in zip(x.split(CHUNK), y.split(CHUNK), weight.split(CHUNK)):
            p = torch.softmax(part @ w.T, dim=1)
            h_out = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) * counted[:, :, None]
            weighted = (h_out[:, :, :, None] * part[:, None, None, :]).flatten(1)
            ggn += (weighted.T @ part).view(classes, classes, width, width)
            grad += ((p - F.one_hot(target.long(), classes).to(p.dtype)) * counted).T @ part
        return ggn.permute(0, 2, 1, 3).reshape(1, size, size), grad.reshape(1, size)
    ggn = x.new_zeros(blocks, width, width)
    grad = x.new_zeros(blocks, width)
    for part, target, counted in zip(x.split(CHUNK), y.split(CHUNK), weight.split(CHUNK)):
        p = torch.sigmoid(part @ theta.T)
        weighted = ((p * (1 - p) * counted)[:, :, None] * part[:, None, :]).flatten(1)
        ggn += (weighted.T @ part).view(blocks, width, width)
        grad += ((p - target.to(p.dtype)) * counted).T @ part
    return ggn, grad


def laplace(
    theta: torch.Tensor, ggn: torch.Tensor, grad: torch.Tensor, prior_mean: torch.Tensor, prior_precision: torch.Tensor
) -> Posterior:
    """Lambda = GGN + P0; mean = theta - Lambda^{-1} (grad + P0 (theta - m0)); the covariance's
    factor as their code takes it (Cholesky of Lambda^{-1} computed from Lambda's factor)."""
    precision = ggn + prior_precision
    factor = safe_cholesky(precision)
    step = grad + (prior_precision @ (theta - prior_mean)[..., None]).squeeze(-1)
    mean = theta - torch.cholesky_solve(step[..., None], factor).squeeze(-1)
    eye = torch.eye(precision.shape[-1], dtype=precision.dtype, device=precision.device).expand_as(precision)
    covariance = torch.cholesky_solve(eye, factor)
    return Posterior(mean, precision, safe_cholesky(covariance))


def gradient_moments(
    kind: str, draws: torch.Tensor, h: torch.Tensor, y: torch.Tensor, power: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo mean and variance of g = dl/dh per sample and binary output (N, O, D) or per
    sample for a multiclass task (N, 1, D), from posterior draws (S, G, M); the variance clamped
    at 1e-8 and raised to ``power``."""
    count = draws.shape[0]
    if kind == "multiclass":
        samples = draws.view(count, -1, h.shape[1] + 1)
        w, b = samples[..., :-1], samples[..., -1]
        logits = torch.einsum("nd,scd->snc", h, w) + b[:, None, :]
        residual = torch.softmax(logits, dim=-1) - F.one_hot(y.long(), w.shape[1]).to(h.dtype)
        g = torch.einsum("scd,snc->snd", w, residual)
        mean, second = g.mean(0)[:, None], (g**2).mean(0)[:, None]
    else:
        w, b = draws[..., :-1], draws[..., -1]
        residual = torch.sigmoid(torch.einsum("nd,sod->sno", h, w) + b[:, None, :]) - y.to(h.dtype)
        mean = torch.einsum("sod,sno->nod", w, residual) / count
        second = torch.einsum("sod,sno->nod", w**2, residual**2) / count
    return mean, (second - mean**2).clamp_min(1e-8) ** power


def regression_moments(posterior: Posterior, h: torch.Tensor, y: torch.Tensor, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and variance of g = d (w h - y)^2 / dh = 2 (w.h - y) w per sample and output
    (N, O, D) for w ~ N(mu, Sigma) (the posterior; the authors' closed form, ours derived from the
    moments of the jointly Gaussian a = w.h and b = w_d): with m_a = h.mu, v_a = h' Sigma h,
    c = Sigma h, v_b = diag Sigma,
        E[g]   = 2 (c + (m_a - y) mu)
        E[g^2] = 4 ((v_a + m_a^2)(v_b + mu^2) + 2 c^2 + 4 c m_a mu - 2 y (m_a (v_b + mu^2) + 2 c mu) + y^2 (v_b + mu^2)),
    the variance clamped at 1e-8 and raised to ``power``."""
    mu = posterior.mean  # (O, D)
    sigma = torch.cholesky_inverse(safe_cholesky(posterior.precision))  # (O, D, D)
    c = torch.einsum("ode,ne->nod", sigma, h)
    m_a = h @ mu.T  # (N, O)
    v_a = torch.einsum("nod,nd->no", c, h)
    second_b = torch.diagonal(sigma, dim1=-2, dim2=-1) + mu**2  # E[b^2] (O, D)
    y = y.to(h.dtype)[:, :, None]
    m_a, v_a = m_a[:, :, None], v_a[:, :, None]
    mean = 2 * (c + (m_a - y) * mu)
    second_ab2 = (v_a + m_a**2) * second_b + 2 * c**2 + 4 * c * m_a * mu
    second = 4 * (second_ab2 - 2 * y * (m_a * second_b + 2 * c * mu) + y**2 * second_b)
    return mean, (second - mean**2).clamp_min(1e-8) ** power


def precision_shares(
    variance: torch.Tensor, labelled: torch.Tensor, row_task: torch.Tensor, tasks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each task's share of the aggregation, what it weighs in dL/dh: per sample the mean over D
    of (1 / v_r) / sum_r' (1 / v_r') summed over the task's rows (``row_task``: each row's task
    index); (the sum over the samples labelled for some task (T,), their count)."""
    precision = labelled[:, :, None].to(variance.dtype) / variance
    share = (precision / precision.sum(1, keepdim=True).clamp_min(torch.finfo(variance.dtype).tiny)).mean(2)
    per_task = share.new_zeros(share.shape[0], tasks).index_add_(1, row_task.to(share.device), share)
    some = labelled.any(1)
    return per_task[some].sum(0), some.sum()


def precision_weighted(
    mean: torch.Tensor, variance: torch.Tensor, labelled: torch.Tensor, batch_size: float | torch.Tensor
) -> torch.Tensor:
    """dL/dh (N, D) = (sum_r mu_r / v_r) / (sum_r 1 / v_r) / batch_size over the rows r (N, R, D)
    a sample is labelled for (``labelled`` (N, R)); zero for a sample labelled for none."""
    precision = labelled[:, :, None].to(mean.dtype) / variance
    total = precision.sum(1)
    return torch.where(total > 0, (precision * mean).sum(1) / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0) / batch_size


@dataclass(frozen=True)
class Group:
    """Tasks whose last layers share one posterior computation: every binary output of every
    ``binary`` and ``multilabel`` task together (their code's group of binary tasks: independent
    blocks, one batched factorisation and one draw), each ``multiclass`` and each ``regression``
    task alone."""

    name: str
    kind: str
    tasks: tuple[Task, ...]


def task_groups(tasks: Sequence[Task]) -> list[Group]:
    """The groups, in the order of their first task; the binary group is named ``:binary`` (task
    names have no colon)."""
    binary = tuple(t for t in tasks if t.kind in ("binary", "multilabel"))
    groups: list[Group] = []
    for task in tasks:
        if task.kind in ("binary", "multilabel"):
            if task is binary[0]:
                groups.append(Group(":binary", "binary", binary))
        else:
            groups.append(Group(task.name, task.kind, (task,)))
    return groups


class BayesAggMTL(Strategy):
    """BayesAgg-MTL: the shared gradient at the heads' input h is the precision-weighted mean of
    the tasks' gradients, their moments taken over Gaussian last-layer posteriors (module
    docstring).

    Args:
        prior_variance: gamma, the full-data posterior's prior N(0, gamma I) (their ``gamma``).
        mc_samples: posterior draws per step for the moments (their ``num_mc_samples``).
        variance_power: exponent of the classification tasks' gradient variances (their
            ``sqrt_power_cls``).
        regression_variance_power: the regression tasks' (their ``sqrt_power``).
        warmup_epochs: epochs of the plain loss sum first (their ``ls_epochs``), at least 1.
        head_clip, shared_clip: global-norm clipping of the heads' and (after the warm-up) the
            shared parameters' gradients; 0 turns one off.
    """

    supports_fp16_scaler = False  # the shared gradient is written, not scaled through a backward
    needs_linear_readout = True

    def __init__(
        self,
        prior_variance: float = 0.005,
        mc_samples: int = 1024,
        variance_power: float = 0.0005,
        warmup_epochs: int = 1,
        head_clip: float = 50.0,
        shared_clip: float = 0.0,
        regression_variance_power: float = 0.3,
    ):
        super().__init__()
        if not prior_variance > 0:
            raise ConfigError(f"optim.strategy.prior_variance must be a positive number, got {prior_variance!r}.")
        if mc_samples < 2:
            raise ConfigError(
                f"optim.strategy.mc_samples must be an integer >= 2 (a variance needs two draws), got {mc_samples!r}."
            )
        if warmup_epochs < 1:
            raise ConfigError(
                "optim.strategy.warmup_epochs must be an integer >= 1 (the first full-data posterior needs an "
                f"epoch's features), got {warmup_epochs!r}."
            )
        if min(variance_power, regression_variance_power, head_clip, shared_clip) < 0:
            raise ConfigError(
                "optim.strategy.variance_power, regression_variance_power, head_clip and shared_clip must be numbers >= 0."
            )
        self.regression_variance_power = float(regression_variance_power)
        self.prior_variance, self.mc_samples, self.variance_power = float(prior_variance), int(mc_samples), float(variance_power)
        self.warmup_epochs, self.head_clip, self.shared_clip = int(warmup_epochs), float(head_clip), float(shared_clip)
        self.epoch = 0
        self._current: list[dict[str, torch.Tensor]] = []  # this epoch's features and labels, per step
        self._previous: dict[str, torch.Tensor] | None = None  # the last epoch's, until its posterior is made
        self._full: dict[str, Posterior] = {}  # the full-data posteriors (each step's prior)
        self._layers: tuple[nn.Module, dict[str, nn.Linear]] | None = None  # the checked readout of the last network
        self.shares: torch.Tensor | None = None  # the last step's tasks' shares of the aggregation (logged)

    # ----- the network's shape -----------------------------------------------------------------
    def _readout(self, ctx: StepContext) -> dict[str, nn.Linear]:
        """Each task's one linear layer, checked against the head's parameters and its loss once
        per network (not at every step)."""
        if self._layers is not None and self._layers[0] is ctx.model:
            return self._layers[1]
        layers = {}
        for task in ctx.tasks:
            expected = SUPPORTED_LOSSES.get(task.kind)
            if expected is None or task.loss is not expected:
                raise ConfigError(
                    "optim=bayesagg_mtl writes the posteriors of binary and multi-label BCE, softmax cross-entropy and "
                    "squared error (losses.squared_error); "
                    f"task {task.name!r} ({task.kind}) is trained with another loss."
                )
            layer = ctx.model.readout_layer(task.name)
            if {id(p) for p in ctx.model.head_parameters(task.name)} != {id(layer.weight), id(layer.bias)}:
                raise ConfigError(
                    f"optim=bayesagg_mtl needs task {task.name!r}'s head to be its one linear layer on the shared vector."
                )
            layers[task.name] = layer
        self._layers = (ctx.model, layers)
        return layers

    @staticmethod
    def _shared_vector(shared: Mapping[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
        if len(shared) != 1 or next(iter(shared.values())).dim() != 2:
            raise ConfigError("optim=bayesagg_mtl needs a network whose shared representation is one (N, D) vector per sample.")
        return next(iter(shared.items()))

    @staticmethod
    def _labels(task: Task, batch: Batch, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets, labelled mask (N,)): targets (N, O) floats for binary outputs, (N,) class
        indices; unlabelled samples' targets set to 0."""
        labelled = task.present(batch)
        mask = (
            torch.ones(size, dtype=torch.bool, device=device)
            if labelled is None
            else labelled.to(device=device, dtype=torch.bool)
        )
        if task.target_key not in batch:
            mask = torch.zeros_like(mask)
            target = (
                torch.zeros(size, device=device) if task.kind == "multiclass" else torch.zeros(size, task.channels, device=device)
            )
            return target, mask
        target = batch[task.target_key].to(device)
        target = target.reshape(size) if task.kind == "multiclass" else target.reshape(size, -1)
        return torch.where(mask.view(-1, *[1] * (target.dim() - 1)), target, torch.zeros_like(target)), mask

    # ----- posteriors --------------------------------------------------------------------------
    @staticmethod
    def _group_labels(
        group: Group, labels: Callable[[Task], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets, labelled (N, rows)) of a group from each task's (targets, mask (N,)): binary
        outputs side by side, a multiclass task's class indices with one row, a regression
        task's outputs."""
        parts = [labels(t) for t in group.tasks]
        if group.kind == "multiclass":
            y, mask = parts[0]
            return y, mask[:, None]
        return torch.cat([y for y, _ in parts], 1), torch.cat([m[:, None].expand(-1, y.shape[1]) for y, m in parts], 1)

    def _posterior(
        self,
        ctx: StepContext,
        group: Group,
        layers: Mapping[str, nn.Linear],
        h: torch.Tensor,
        y: torch.Tensor,
        labelled: torch.Tensor,
        prior: Posterior | None,
    ) -> Posterior:
        theta = torch.cat(
            [layer_blocks(group.kind, layers[t.name].weight.detach(), layers[t.name].bias.detach()) for t in group.tasks]
        ).to(h.dtype)
        x = h if group.kind == "regression" else with_bias_input(h)
        ggn, grad = curvature(group.kind, theta, x, y, labelled)
        ggn, grad = ctx.global_sum(ggn), ctx.global_sum(grad)
        if prior is None:
            eye = torch.eye(theta.shape[1], dtype=h.dtype, device=h.device).expand(theta.shape[0], -1, -1)
            prior = Posterior(torch.zeros_like(theta), eye / self.prior_variance, eye * self.prior_variance**0.5)
        return laplace(theta, ggn, grad, prior.mean, prior.precision)

    def _refresh_full_data_posteriors(self, ctx: StepContext, layers: Mapping[str, nn.Linear]) -> None:
        """At an epoch's first step: every group's posterior over the previous epoch's samples."""
        if self._previous is None:
            if not self._full:
                raise RuntimeError("bayesagg_mtl has no full-data posterior: no epoch's features were kept before this step.")
            return
        stored = self._previous
        kept = lambda t: (stored[f"y/{t.name}"], stored[f"m/{t.name}"])
        self._full = {
            g.name: self._posterior(ctx, g, layers, stored["h"], *self._group_labels(g, kept), None)
            for g in task_groups(ctx.tasks)
        }
        self._previous = None

    def shared_gradient(self, ctx: StepContext, h: torch.Tensor, batch: Batch, layers: Mapping[str, nn.Linear]) -> torch.Tensor:
        """dL/dh (N, D) of this rank's samples (module docstring), times the number of ranks so
        that the ranks' average is the union's."""
        means, variances, labelled, row_task = [], [], [], []
        index = {t.name: i for i, t in enumerate(ctx.tasks)}
        for group in task_groups(ctx.tasks):
            y, present = self._group_labels(group, lambda t: self._labels(t, batch, h.shape[0], h.device))
            posterior = self._posterior(ctx, group, layers, h, y, present, self._full[group.name])
            if group.kind == "regression":
                mean, variance = regression_moments(posterior, h, y, self.regression_variance_power)
            else:
                draws = ctx.agree(posterior.sample(self.mc_samples))
                mean, variance = gradient_moments(group.kind, draws, h, y, self.variance_power)
            means.append(mean)
            variances.append(variance)
            labelled.append(present)
            row_task += [index[t.name] for t in group.tasks for _ in range(1 if group.kind == "multiclass" else t.channels)]
        variance, present = torch.cat(variances, 1), torch.cat(labelled, 1)
        rows = torch.tensor(row_task, device=h.device)
        sums, count = precision_shares(variance, present, rows, len(ctx.tasks))
        totals = ctx.global_sum(torch.cat([h.new_tensor([h.shape[0]]), count.to(h.dtype)[None], sums.to(h.dtype)]))
        self.shares = totals[2:] / totals[1].clamp_min(1)
        return ctx.world_size * precision_weighted(torch.cat(means, 1), variance, present, totals[0])

    # ----- one iteration -----------------------------------------------------------------------
    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        layers = self._readout(ctx)
        shared = ctx.model.representation(*ctx.inputs(batch))
        key, h = self._shared_vector(shared)
        warm = self.epoch < self.warmup_epochs
        outputs = ctx.model.heads(shared if warm else {key: h.detach()})
        losses = ctx.losses(outputs, batch)
        if not losses:
            return {}
        optimizer = ctx.optimizers()[0]
        optimizer.zero_grad(set_to_none=True)
        total = torch.stack(list(losses.values())).sum()
        features = h.detach().float() if h.dtype in (torch.float16, torch.bfloat16) else h.detach()
        if not warm:
            self._refresh_full_data_posteriors(ctx, layers)
            gradient = self.shared_gradient(ctx, features, batch, layers)
            total = total + (h * gradient.to(h.dtype)).sum()
        ctx.backward(total)
        ctx.clip_gradients(optimizer)
        heads = [p for task in ctx.tasks for p in ctx.model.head_parameters(task.name) if p.grad is not None]
        if self.head_clip > 0:
            torch.nn.utils.clip_grad_norm_(heads, self.head_clip)
        if not warm and self.shared_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in ctx.model.shared_parameters() if p.grad is not None], self.shared_clip)
        optimizer.step()
        self._keep(ctx, features, batch)
        logged = self.detached(losses)
        if not warm and self.shares is not None:  # the effective task weighting, for the task-balance plots
            logged |= {f"weight/{t.name}": share.detach().float() for t, share in zip(ctx.tasks, self.shares)}
        return logged

    def _keep(self, ctx: StepContext, h: torch.Tensor, batch: Batch) -> None:
        entry = {"h": h}
        for task in ctx.tasks:
            entry[f"y/{task.name}"], entry[f"m/{task.name}"] = self._labels(task, batch, h.shape[0], h.device)
        self._current.append(entry)

    def on_train_epoch_end(self, epoch: int) -> None:
        """The epoch's kept features become the next full-data posterior's."""
        self.epoch += 1
        if self._current:
            self._previous = {k: torch.cat([entry[k] for entry in self._current]) for k in self._current[0]}
        self._current = []

    # ----- checkpoints -------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "current": self._current,
            "previous": self._previous,
            "full": {name: posterior.state() for name, posterior in self._full.items()},
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self._current = list(state["current"])
        self._previous = state["previous"]
        self._full = {name: Posterior(**parts) for name, parts in state["full"].items()}
