"""A :class:`~medmtl.strategies.base.StepContext` in plain PyTorch, without Lightning.

For benchmarks, notebooks and tests that drive a strategy directly: forward through the model,
per-task losses, ``Tensor.backward`` for ``backward``, optimizers given at construction, and
global-norm gradient clipping when ``clip_norm`` is set. With a ``guard``
(:class:`~medmtl.nonfinite.NonFiniteGuard`) the losses and optimizer steps are checked for
non-finite values as in the Lightning module (the caller runs ``begin_iteration`` /
``end_iteration`` around each step).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from medmtl.nonfinite import GuardedOptimizer, NonFiniteGuard
from medmtl.tasks import Task, compute_losses


class PlainContext:
    def __init__(self, model, tasks: Sequence[Task], optimizers: Sequence[torch.optim.Optimizer],
                 clip_norm: float | None = None, task_batches: Mapping[str, Iterator] | None = None,
                 guard: NonFiniteGuard | None = None):
        self.model, self.tasks, self._optimizers, self.clip_norm = model, list(tasks), list(optimizers), clip_norm
        self._task_batches = dict(task_batches or {})
        self.guard = guard

    def task_batch(self, task):
        if task not in self._task_batches:
            raise KeyError(f"PlainContext has no batches for task {task!r}: pass task_batches=.")
        return next(self._task_batches[task])

    def forward(self, batch, tasks=None):
        return self.model(batch["image"], tasks=tasks)

    def losses(self, outputs, batch, tasks=None):
        chosen = self.tasks if tasks is None else [t for t in self.tasks if t.name in tasks]
        losses = compute_losses(chosen, outputs, batch)
        if self.guard is not None:
            self.guard.record_losses(losses)
        return losses

    def backward(self, loss, **kwargs):
        loss.backward(**kwargs)

    def optimizers(self):
        if self.guard is None:
            return self._optimizers
        return [GuardedOptimizer(optimizer, self.guard) for optimizer in self._optimizers]

    def clip_gradients(self, optimizer):
        if self.clip_norm:
            optimizer = getattr(optimizer, "optimizer", optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
