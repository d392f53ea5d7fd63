"""Non-finite losses and gradients (``optim.nonfinite``): stop the run, or skip the update.

Every strategy steps its optimizers through the step context, which hands out
:class:`GuardedOptimizer` wrappers and reports each task loss it computes to the guard. Before an
optimizer steps, the guard reduces every gradient it is about to apply (``.grad`` of its
parameters, and for MAO the per-task gradients it was handed) to one device-side flag with
``torch._foreach_norm(..., inf)`` (max |g| per tensor: a NaN or an infinity anywhere makes it
non-finite, and a maximum cannot overflow the way a sum of squares can).

- ``stop`` (default): the flags of the losses stay on the device until an optimizer is about to
  step; then ONE host synchronisation reads them with the flag of the gradients it would apply
  (one read per optimizer step, as ``skip``: one per iteration for most strategies, T for MTL-IO),
  and the first non-finite one ends the run with :class:`~medmtl.errors.NonFiniteError` before
  that update: which task's loss (or which step's gradient), the iteration, the epoch and the
  learning rate. The parameters keep the values of the last finite update (a user's own loop
  can inspect them); losses computed after the iteration's last step (FAMO's second forward) are
  read when the iteration ends.
- ``skip``: each step reads its flag (one synchronisation per optimizer step, as an fp16 gradient
  scaler does) and a non-finite update is dropped (gradients cleared, optimizer not stepped); the
  floating-point buffers (batch-norm statistics) are restored to their values before the
  iteration, whose forward produced the non-finite values. Skipped updates are counted
  (``train/skipped_updates``) and the run stops after ``max_consecutive_skips`` iterations in a row
  that skipped one.
- ``off``: no check during training (the baseline of ``benchmarks/bench_nonfinite.py``).

Independently of the mode, the module refuses to write a checkpoint with a non-finite weight and
stops when an evaluation output is non-finite (:mod:`medmtl.module`), so that model selection and
the evaluators never see one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medmtl.errors import ConfigError, NonFiniteError

MODES = ("stop", "skip", "off")


def all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor on the tensors' device: True when every element of every tensor is finite."""
    tensors = [t for t in tensors if t is not None and t.numel()]
    if not tensors:
        return torch.tensor(True)
    by_device: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault((t.device, t.dtype), []).append(t.detach())
    flags = [torch.isfinite(torch.stack(torch._foreach_norm(group, math.inf))).all() for group in by_device.values()]
    device = flags[0].device
    return torch.stack([f.to(device) for f in flags]).all()


def optimizer_gradients(optimizer: Any) -> list[torch.Tensor]:
    """The gradients ``optimizer.step()`` would apply: ``.grad`` of its parameters, plus the
    per-task gradients a :class:`~medmtl.strategies.mao.MultiAdaptive` was handed."""
    inner = getattr(optimizer, "optimizer", optimizer)
    grads = [p.grad for group in inner.param_groups for p in group["params"] if p.grad is not None]
    pending = getattr(inner, "pending_gradients", None)
    return grads + (list(pending()) if pending is not None else [])


def learning_rates(optimizer: Any) -> list[float]:
    inner = getattr(optimizer, "optimizer", optimizer)
    return sorted({float(group["lr"]) for group in inner.param_groups})


class NonFiniteGuard:
    """See the module docstring. ``model`` is the network whose buffers ``skip`` restores."""

    def __init__(self, mode: str = "stop", max_consecutive_skips: int = 10):
        if mode not in MODES:
            raise ConfigError(f"optim.nonfinite must be one of {MODES}, got {mode!r}.")
        if max_consecutive_skips < 1:
            raise ConfigError(f"optim.max_consecutive_skips must be at least 1, got {max_consecutive_skips}.")
        self.mode, self.max_consecutive_skips = mode, max_consecutive_skips
        self.skipped_updates = 0
        self.consecutive = 0
        self._iteration, self._epoch = 0, 0
        self._pending: list[tuple[torch.Tensor, str]] = []  # (finite flag, what it is about)
        self._losses_since_step: list[str] = []
        self._skipped_now = False
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ----- the iteration ----------------------------------------------------------------------
    def begin_iteration(self, iteration: int, epoch: int, model: nn.Module) -> None:
        self._iteration, self._epoch = iteration, epoch
        self._pending, self._losses_since_step, self._skipped_now = [], [], False
        if self.mode == "skip":
            self._buffers = [(b, b.detach().clone()) for b in model.buffers() if b.is_floating_point()]

    def record_losses(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Called by the step context for every set of task losses it computes."""
        self._losses_since_step += [name for name in losses if name not in self._losses_since_step]
        if self.mode == "stop":
            for name, loss in losses.items():
                self._pending.append((torch.isfinite(loss.detach()).all(), f"the loss of task {name!r}"))

    def allow_step(self, optimizer: Any) -> bool:
        """Whether ``optimizer`` may apply its update (see the module docstring)."""
        tasks, self._losses_since_step = self._losses_since_step, []
        if self.mode == "off":
            return True
        finite = all_finite(optimizer_gradients(optimizer))
        about = f"the gradient of the update from {', '.join(repr(t) for t in tasks) or 'no task'}"
        if self.mode == "stop":
            rates = learning_rates(optimizer)
            self._pending.append((finite, f"{about} (learning rate {_format(rates)})"))
            self._stop_if_nonfinite(rates)
            return True
        if bool(finite):
            return True
        self._skipped_now = True
        self.skipped_updates += 1
        return False

    def end_iteration(self, learning_rate: Sequence[float]) -> None:
        """``stop``: one synchronisation reads the iteration's flags; ``skip``: count and restore."""
        if self.mode == "stop":
            self._stop_if_nonfinite(learning_rate)
        if self.mode == "skip":
            if self._skipped_now:
                for buffer, saved in self._buffers:
                    buffer.copy_(saved)
                self.consecutive += 1
            else:
                self.consecutive = 0
            self._buffers = []
            if self.consecutive >= self.max_consecutive_skips:
                raise NonFiniteError(
                    f"Training stopped at iteration {self._iteration} (epoch {self._epoch}): {self.consecutive} "
                    f"iterations in a row produced non-finite losses or gradients ({self.skipped_updates} updates "
                    f"skipped in all), at learning rate {_format(learning_rate)}; lower optim.optimizer.lr."
                )

    def _stop_if_nonfinite(self, learning_rate: Sequence[float]) -> None:
        """``stop``: one synchronisation reads the flags not read yet; the first non-finite one ends the run."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = torch.stack([flag.to(pending[0][0].device) for flag, _ in pending])
        if not bool(flags.all()):
            first = int((~flags).nonzero()[0])
            raise NonFiniteError(
                f"Training stopped at iteration {self._iteration} (epoch {self._epoch}): {pending[first][1]} is "
                f"NaN or infinite, at learning rate {_format(learning_rate)}; lower optim.optimizer.lr, clip "
                "gradients (optim.gradient_clip_val), or set optim.nonfinite=skip to drop such updates."
            )


def _format(rates: Sequence[float]) -> str:
    return " / ".join(f"{r:g}" for r in rates) if rates else "?"


class GuardedOptimizer:
    """An optimizer (Lightning's wrapper) whose ``step`` asks the guard first; everything else is
    the wrapped optimizer's."""

    def __init__(self, optimizer: Any, guard: NonFiniteGuard):
        self.unwrapped, self._guard = optimizer, guard

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer inside (under Lightning's wrapper, when there is one)."""
        return getattr(self.unwrapped, "optimizer", self.unwrapped)

    def step(self, *args, **kwargs):
        if self._guard.allow_step(self.unwrapped):
            return self.unwrapped.step(*args, **kwargs)
        self.unwrapped.zero_grad(set_to_none=True)
        if hasattr(self.optimizer, "task_gradients"):
            self.optimizer.task_gradients = {}
        return None

    def __getattr__(self, name: str):
        return getattr(self.unwrapped, name)


def first_nonfinite(named: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor with a NaN or an infinity, or None."""
    floats = {k: v for k, v in named.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if not floats or bool(all_finite(list(floats.values()))):
        return None
    return next(k for k, v in floats.items() if not bool(torch.isfinite(v).all()))
