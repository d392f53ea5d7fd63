"""The :class:`~medmtl.strategies.base.StepContext` that strategies train through.

:class:`TrainingContext` is the one implementation; the Lightning module builds one over its own
``manual_backward``, optimizers and per-task loader streams, and :class:`PlainContext` builds one
in plain PyTorch for benchmarks, notebooks and tests that drive a strategy directly
(``Tensor.backward``, optimizers given at construction, global-norm gradient clipping when
``clip_norm`` is set). Both compute the per-task losses with the network's own terms
(:func:`network_losses`: MoE gate losses, deep supervision). With a ``guard``
(:class:`~medmtl.nonfinite.NonFiniteGuard`) the losses and optimizer steps are checked for
non-finite values as in the Lightning module (the caller runs ``begin_iteration`` /
``end_iteration`` around each step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from medmtl.models.base import MultiTaskNet
from medmtl.nonfinite import GuardedOptimizer, NonFiniteGuard
from medmtl.tasks import Task, compute_losses


def network_losses(
    model,
    tasks: Sequence[Task],
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    names: Sequence[str] | None = None,
    deep_supervision: bool = True,
) -> dict[str, torch.Tensor]:
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


class TrainingContext:
    """The one :class:`~medmtl.strategies.base.StepContext` implementation.

    What differs between Lightning and plain PyTorch is passed in as functions: ``backward``
    (``manual_backward`` or ``Tensor.backward``), ``optimizers`` (the current optimizer list),
    ``clip_gradients`` and ``task_batch``; inputs, forward, the per-task losses with the network's
    own terms and the non-finite ``guard`` are the same code for both.
    """

    def __init__(
        self,
        model,
        tasks: Sequence[Task],
        optimizers: Callable[[], Sequence[torch.optim.Optimizer]],
        backward: Callable[..., None],
        clip_gradients: Callable[[torch.optim.Optimizer], None],
        task_batch: Callable[[str], Mapping[str, torch.Tensor]],
        guard: NonFiniteGuard | None = None,
        input_keys: Sequence[str] = ("image",),
    ):
        self.model: MultiTaskNet = model
        self.tasks: Sequence[Task] = list(tasks)
        self._optimizers, self._backward, self._clip, self._task_batch = optimizers, backward, clip_gradients, task_batch
        self.guard = guard
        self.input_keys = tuple(input_keys)

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
        self._backward(loss, **kwargs)

    def optimizers(self):
        optimizers = list(self._optimizers())
        if self.guard is None:
            return optimizers
        return [GuardedOptimizer(optimizer, self.guard) for optimizer in optimizers]

    def task_batch(self, task):
        return self._task_batch(task)

    def clip_gradients(self, optimizer):
        self._clip(optimizer)


def clip_by_global_norm(optimizer, max_norm: float | None) -> None:
    """Clip the gradients of ``optimizer``'s parameters to a global norm of ``max_norm`` (None: no-op)."""
    if max_norm:
        optimizer = getattr(optimizer, "optimizer", optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm)


class PlainContext(TrainingContext):
    """:class:`TrainingContext` in plain PyTorch: ``Tensor.backward``, the given optimizers,
    global-norm clipping at ``clip_norm``, and ``task_batches`` (task -> iterator of batches)."""

    def __init__(
        self,
        model,
        tasks: Sequence[Task],
        optimizers: Sequence[torch.optim.Optimizer],
        clip_norm: float | None = None,
        task_batches: Mapping[str, Iterator] | None = None,
        guard: NonFiniteGuard | None = None,
        input_keys: Sequence[str] = ("image",),
    ):
        streams = dict(task_batches or {})

        def task_batch(task):
            if task not in streams:
                raise KeyError(f"PlainContext has no batches for task {task!r}: pass task_batches=.")
            return next(streams[task])

        optimizers = list(optimizers)
        super().__init__(
            model,
            tasks,
            lambda: optimizers,
            lambda loss, **kwargs: loss.backward(**kwargs),
            lambda optimizer: clip_by_global_norm(optimizer, clip_norm),
            task_batch,
            guard,
            input_keys,
        )
