"""The :class:`~medmtl.strategies.base.StepContext` that strategies train through.

:class:`TrainingContext` is the one implementation; the Lightning module builds one over its own
``manual_backward``, optimizers and per-task loader streams, and :class:`PlainContext` builds one
in plain PyTorch for benchmarks, notebooks and tests that drive a strategy directly
(``Tensor.backward``, optimizers given at construction, global-norm gradient clipping when
``clip_norm`` is set). Both compute the per-task losses with the network's own terms
(:func:`network_losses`: MoE gate losses, deep supervision). With a ``guard``
(:class:`~medmtl.nonfinite.NonFiniteGuard`) the losses and optimizer steps are checked for
non-finite values as in the Lightning module (the caller runs ``begin_iteration`` /
``end_iteration`` around each step). With a distributed ``reducer``
(:class:`~medmtl.distributed.Reducer`) the losses, the optimizers' gradients and whatever a
strategy reduces through ``global_mean`` are the union's over the ranks (:mod:`medmtl.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from medmtl.distributed import GradientSync, Reducer, SynchronizedOptimizer, optimizer_parameters
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
        sync: GradientSync | None = None,
    ):
        self.model: MultiTaskNet = model
        self.tasks: Sequence[Task] = list(tasks)
        self._optimizers, self._backward, self._clip, self._task_batch = optimizers, backward, clip_gradients, task_batch
        self.guard = guard
        self.input_keys = tuple(input_keys)
        self.sync = sync if sync is not None else GradientSync(Reducer())

    @property
    def reducer(self) -> Reducer:
        return self.sync.reducer

    @property
    def world_size(self) -> int:
        """Processes training together (1 without DDP)."""
        return self.reducer.world_size

    def global_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The average over ranks of a parameter gradient or Jacobian of the local losses: the
        union's (identity on one process)."""
        return self.reducer.mean(tensor)

    def global_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (statistics that add up over samples: KPI numerators and counts)."""
        return self.reducer.sum(tensor)

    def agree(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of a random draw, on every rank."""
        return self.reducer.agree(tensor)

    def gradients(self, loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """d loss / d params (zeros where unused; the graph is kept), averaged over the ranks in one
        reduction: the union's gradient."""
        raw = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(raw, params)]
        if not self.reducer.distributed:
            return grads
        flat = self.global_mean(torch.cat([g.reshape(-1) for g in grads]))
        return [chunk.view_as(p) for chunk, p in zip(flat.split([p.numel() for p in params]), params)]

    def mark_global(self, params) -> None:
        """``params``' ``.grad`` already hold the union's gradient (written from a reduced
        Jacobian): the optimizer step does not average them again."""
        self.sync.mark_global(params)

    def inputs(self, batch):
        return tuple(batch[key] for key in self.input_keys)

    def forward(self, batch, tasks=None):
        return self.model(*self.inputs(batch), tasks=tasks)

    def losses(self, outputs, batch, tasks=None):
        losses = network_losses(self.model, self.tasks, outputs, batch, tasks)
        if self.reducer.distributed:
            losses = self._global_losses(losses, outputs, batch, tasks)
        if self.guard is not None:
            self.guard.record_losses(losses)
        return losses

    def backward(self, loss, **kwargs):
        self._backward(loss, **kwargs)

    def _global_losses(self, losses, outputs, batch, tasks):
        """The union's losses (:meth:`medmtl.distributed.Reducer.global_losses`): every rank
        asks for the same tasks, those forwarded here."""
        asked = [t for t in self.tasks if t.name in outputs and (tasks is None or t.name in tasks)]
        counts = {}
        for task in asked:
            if task.name in losses:
                mask = task.present(batch)
                counts[task.name] = int(outputs[task.name].shape[0] if mask is None else mask.bool().sum())
        names = [t.name for t in asked]
        device = outputs[names[0]].device if names else torch.device("cpu")
        return self.reducer.global_losses(losses, counts, names, lambda name: outputs[name].sum() * 0.0, device)

    def optimizers(self):
        optimizers = list(self._optimizers())
        if self.guard is not None:
            optimizers = [GuardedOptimizer(optimizer, self.guard) for optimizer in optimizers]
        if self.reducer.distributed:
            optimizers = [SynchronizedOptimizer(optimizer, self.sync) for optimizer in optimizers]
        return optimizers

    def task_batch(self, task):
        return self._task_batch(task)

    def clip_gradients(self, optimizer):
        if isinstance(optimizer, SynchronizedOptimizer):
            optimizer.synchronize()  # clip the union's gradient, not the local one
        self._clip(optimizer)


def clip_by_global_norm(optimizer, max_norm: float | None) -> None:
    """Clip the gradients of ``optimizer``'s parameters to a global norm of ``max_norm`` (None: no-op)."""
    if max_norm:
        params = [p for p in optimizer_parameters(optimizer) if p.grad is not None]
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
        reducer: Reducer | None = None,
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
            GradientSync(reducer) if reducer is not None else None,
        )
