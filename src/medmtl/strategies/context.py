"""A :class:`~medmtl.strategies.base.StepContext` in plain PyTorch, without Lightning.

For benchmarks, notebooks and tests that drive a strategy directly: forward through the model,
per-task losses with the network's own terms (:func:`network_losses`, shared with the Lightning
module), ``Tensor.backward`` for ``backward``, optimizers given at construction, and
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


def network_losses(model, tasks: Sequence[Task], outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                   names: Sequence[str] | None = None, deep_supervision: bool = True) -> dict[str, torch.Tensor]:
    """Losses of the tasks in ``names`` (all by default) that have labelled samples in ``batch``,
    each with the network's own terms for that task: its auxiliary loss for the last forward (the
    MoE gate losses) and, with ``deep_supervision``, the task loss of every intermediate prediction
    it made (PAD-Net's and MTI-Net's initial predictions; evaluation leaves these out, so that the
    validation loss measures the final outputs)."""
    chosen = list(tasks) if names is None else [t for t in tasks if t.name in names]
    losses = compute_losses(chosen, outputs, batch)
    by_name = {t.name: t for t in chosen}
    for name in losses:
        if deep_supervision:
            for intermediate in model.deep_supervision(name):
                term = by_name[name].compute_loss(intermediate, batch)
                if term is not None:
                    losses[name] = losses[name] + term
        auxiliary = model.auxiliary_loss(name)
        if auxiliary is not None:
            losses[name] = losses[name] + auxiliary
    return losses


class PlainContext:
    def __init__(self, model, tasks: Sequence[Task], optimizers: Sequence[torch.optim.Optimizer],
                 clip_norm: float | None = None, task_batches: Mapping[str, Iterator] | None = None,
                 guard: NonFiniteGuard | None = None, input_keys: Sequence[str] = ("image",)):
        self.model, self.tasks, self._optimizers, self.clip_norm = model, list(tasks), list(optimizers), clip_norm
        self._task_batches = dict(task_batches or {})
        self.guard = guard
        self.input_keys = tuple(input_keys)

    def task_batch(self, task):
        if task not in self._task_batches:
            raise KeyError(f"PlainContext has no batches for task {task!r}: pass task_batches=.")
        return next(self._task_batches[task])

    def inputs(self, batch):
        return tuple(batch[key] for key in self.input_keys)

    def forward(self, batch, tasks=None):
        return self.model(*self.inputs(batch), tasks=tasks)

    def losses(self, outputs, batch, tasks=None):
        losses = network_losses(self.model, self.tasks, outputs, batch, tasks)
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
