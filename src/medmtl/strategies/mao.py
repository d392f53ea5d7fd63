"""``mao``: multi-adaptive optimization (Hervella et al. 2024, Eqs. 7-12; docs/methods.md).

Per parameter theta and task n, first and second moments of that task's gradient g_n::

    m_n <- b1 m_n + (1 - b1) g_n ;  v_n <- b2 v_n + (1 - b2) g_n^2          for every task n
    theta <- theta - lr * wd * theta                                          (decoupled decay)
    theta <- theta - lr * sum_n c_t(n) * m_n / sqrt(v_n + eps)               (Eq. 8: eps inside)
    c_t = sqrt(1 - b2^t) / (1 - b1^t)                                         (standard Adam)

so each task gets its own per-parameter adaptive learning rate and the tasks are summed (Eq. 9).
``bias_correction: printed`` uses the paper's printed c_t = (1 - b2^t) / (1 - b1^t) (Eq. 10);
``eps_placement: adam`` uses sqrt(v_n) + eps instead of sqrt(v_n + eps).

A task absent from the batch (partial labels), ``step_counter``:

- ``global`` (default, Algorithm 1 read literally): one timestep t for every task; the absent task's
  gradient is zero, so its moments decay (m_n <- b1 m_n, v_n <- b2 v_n) and its momentum still
  moves the parameters; every parameter is decayed at every step.
- ``per_task``: the absent task updates neither its moments nor its own step count t_n (a per
  (parameter, task) counter), so it stops pushing until it is labelled again; decay applies to
  the parameters some present task reached.

Without partial labels both are the same update. A task that never reaches a parameter (another
task's head) keeps no moments there: its gradient is zero forever, so its term is zero, and heads
behave as plain Adam. Cost: one forward and one batched backward giving all T task gradients.
Gradient clipping is refused (the update does not come from ``.grad``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from medmtl.errors import ConfigError
from medmtl.models.base import MultiTaskNet
from medmtl.strategies.base import Batch, OptimizerFactory, StepContext, Strategy
from medmtl.strategies.gradient_combination import task_jacobian


class MultiAdaptive(torch.optim.Optimizer):
    """The MAO update; per-task gradients are handed over in ``task_gradients`` before ``step``.

    ``task_gradients``: ``{task: {param: gradient}}`` for the parameters each task reached; a
    gradient of ``None`` is a task on that parameter's path but absent from the batch (zero
    gradient: its moments decay) and is only handed over with ``step_counter: global``.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: str = "standard",
        eps_placement: str = "inside",
        step_counter: str = "global",
    ):
        if bias_correction not in ("standard", "printed"):
            raise ConfigError(f"bias_correction must be standard or printed, got {bias_correction!r}.")
        if eps_placement not in ("inside", "adam"):
            raise ConfigError(f"eps_placement must be inside or adam, got {eps_placement!r}.")
        if step_counter not in ("global", "per_task"):
            raise ConfigError(f"step_counter must be global or per_task, got {step_counter!r}.")
        self.step_counter = step_counter
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            eps_placement=eps_placement,
        )
        super().__init__(params, defaults)
        self.task_gradients: dict[str, dict[torch.nn.Parameter, torch.Tensor | None]] = {}

    def pending_gradients(self) -> list[torch.Tensor]:
        """The per-task gradients the next ``step`` applies (checked by :mod:`medmtl.nonfinite`)."""
        return [g for grads in self.task_gradients.values() for g in grads.values() if g is not None]

    @staticmethod
    def correction(step: int, b1: float, b2: float, kind: str) -> float:
        if kind == "printed":
            return (1 - b2**step) / (1 - b1**step)
        return math.sqrt(1 - b2**step) / (1 - b1**step)

    def effective_lr(self, param: torch.nn.Parameter, task: str) -> torch.Tensor | float:
        """The per-element rate applied to task ``task``'s bias-corrected first moment on ``param``,
        lr c_t (1 - b1^t) / sqrt(v_n + eps) (or / (sqrt(v_n) + eps)); 0 where the task has no moments."""
        group = next(g for g in self.param_groups if any(p is param for p in g["params"]))
        moments = self.state.get(param, {}).get(task)
        if moments is None:
            return 0.0
        b1, b2 = group["betas"]
        c = self.correction(moments["step"], b1, b2, group["bias_correction"]) * (1 - b1 ** moments["step"])
        if group["eps_placement"] == "inside":
            return group["lr"] * c / (moments["v"] + group["eps"]).sqrt()
        return group["lr"] * c / (moments["v"].sqrt() + group["eps"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                contributions = [(task, grads[p]) for task, grads in self.task_gradients.items() if p in grads]
                if not contributions and self.step_counter == "per_task":
                    continue
                state = self.state[p]
                update = torch.zeros_like(p)
                for task, grad in contributions:
                    moments = state.setdefault(task, {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                    moments["step"] += 1
                    if grad is None:  # on the path, absent from the batch: a zero gradient
                        moments["m"].mul_(b1)
                        moments["v"].mul_(b2)
                    else:
                        moments["m"].mul_(b1).add_(grad, alpha=1 - b1)
                        moments["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    if group["eps_placement"] == "inside":
                        denominator = (moments["v"] + group["eps"]).sqrt()
                    else:
                        denominator = moments["v"].sqrt() + group["eps"]
                    c = self.correction(moments["step"], b1, b2, group["bias_correction"])
                    update.addcdiv_(moments["m"], denominator, value=c)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        self.task_gradients = {}
        return loss


class MultiAdaptiveOptimization(Strategy):
    """Computes every task's gradient on its path and hands them to :class:`MultiAdaptive`."""

    supports_fp16_scaler = False
    supports_gradient_clipping = False
    reuses_forward_graph = True

    def configure_optimizers(self, model: MultiTaskNet, optimizer_factory: OptimizerFactory):
        optimizer = optimizer_factory(list(model.parameters()))
        if not isinstance(optimizer, MultiAdaptive):
            raise ConfigError(f"optim=mao needs optim.optimizer to be MultiAdaptive, got {type(optimizer).__name__}.")
        return [optimizer]

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        found = self.stacked_losses(ctx, batch)
        if found is None:
            return {}
        losses, names, stacked = found
        model = ctx.model
        params = list(model.parameters())
        jacobian = ctx.global_mean(task_jacobian(stacked, params).detach())
        del stacked
        (optimizer,) = ctx.optimizers()
        inner = getattr(optimizer, "optimizer", optimizer)  # Lightning wraps optimizers
        assert isinstance(inner, MultiAdaptive)  # configure_optimizers refused anything else
        sizes = [p.numel() for p in params]
        gradients: dict[str, dict[torch.nn.Parameter, torch.Tensor | None]] = {}
        for row, name in zip(jacobian, names):
            on_path = {id(p) for p in model.path_parameters(name)}
            chunks = row.split(sizes)
            gradients[name] = {p: g.view_as(p) for p, g in zip(params, chunks) if id(p) in on_path}
        if inner.step_counter == "global":  # absent tasks: zero gradients on their paths
            for task in ctx.tasks:
                if task.name not in gradients:
                    gradients[task.name] = {p: None for p in model.path_parameters(task.name)}
        inner.task_gradients = gradients
        optimizer.step()
        return self.detached(losses) | {"loss/total": torch.stack(list(losses.values())).sum().detach()}
