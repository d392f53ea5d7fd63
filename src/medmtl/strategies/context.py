"""A :class:`~medmtl.strategies.base.StepContext` in plain PyTorch, without Lightning.

For benchmarks, notebooks and tests that drive a strategy directly: forward through the model,
per-task losses, ``Tensor.backward`` for ``backward``, optimizers given at construction, and
global-norm gradient clipping when ``clip_norm`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from medmtl.tasks import Task, compute_losses


class PlainContext:
    def __init__(self, model, tasks: Sequence[Task], optimizers: Sequence[torch.optim.Optimizer],
                 clip_norm: float | None = None, task_batches: Mapping[str, Iterator] | None = None):
        self.model, self.tasks, self._optimizers, self.clip_norm = model, list(tasks), list(optimizers), clip_norm
        self._task_batches = dict(task_batches or {})

    def task_batch(self, task):
        if task not in self._task_batches:
            raise KeyError(f"PlainContext has no batches for task {task!r}: pass task_batches=.")
        return next(self._task_batches[task])

    def forward(self, batch, tasks=None):
        return self.model(batch["image"], tasks=tasks)

    def losses(self, outputs, batch, tasks=None):
        chosen = self.tasks if tasks is None else [t for t in self.tasks if t.name in tasks]
        return compute_losses(chosen, outputs, batch)

    def backward(self, loss, **kwargs):
        loss.backward(**kwargs)

    def optimizers(self):
        return self._optimizers

    def clip_gradients(self, optimizer):
        if self.clip_norm:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
