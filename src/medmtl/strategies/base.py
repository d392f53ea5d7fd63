"""The strategy interface: the one place that knows how task losses become parameter updates.

The LightningModule hands a strategy a :class:`StepContext` and a batch; the strategy runs the
forward passes it needs, calls ``ctx.backward`` (Lightning's ``manual_backward``, so AMP and DDP
keep working) and steps its optimizers. It never reaches into Lightning or the model otherwise.

A strategy is an ``nn.Module``: learnable task weights (uncertainty, GradNorm) are parameters and
running statistics (loss histories) are buffers, so they move with the device and are saved in, and
restored from, every checkpoint with the model. ``extra_state`` covers non-tensor state.

To add a strategy: subclass :class:`Strategy`, implement ``training_step`` (and, when it needs more
than one optimizer or optimizes its own parameters, ``configure_optimizers``), add
``src/medmtl/conf/optim/<name>.yaml``. The module is not touched.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.base import MultiTaskNet
from medmtl.tasks import Task

#: builds an optimizer from parameters, or from parameter groups (dicts with "params" and options)
OptimizerFactory = Callable[[Iterable[nn.Parameter] | Iterable[dict[str, Any]]], torch.optim.Optimizer]
Batch = Mapping[str, torch.Tensor]


class StepContext(Protocol):
    """What the module offers a strategy during one training iteration."""

    model: MultiTaskNet
    tasks: Sequence[Task]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """The network's inputs in ``batch`` (``model(*inputs)``, ``model.representation(*inputs)``)."""

    def forward(self, batch: Batch, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Outputs of the given tasks (all by default) at the current weights."""

    def losses(
        self, outputs: Mapping[str, torch.Tensor], batch: Batch, tasks: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Losses of the tasks that have labelled samples in ``batch`` (absent tasks are left out)."""

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """``manual_backward``: accumulates d(loss)/d(params) into ``.grad`` (``inputs=``,
        ``retain_graph=`` are passed on to ``Tensor.backward``)."""

    def task_batch(self, task: str) -> Batch:
        """The next batch of task ``task``'s own infinite training loader (restarts on its own)."""

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers returned by ``configure_optimizers``, in the same order."""

    def clip_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradients of ``optimizer``'s parameters when clipping is configured (the
        union's gradients under DDP)."""

    # --- data parallelism (:mod:`medmtl.distributed`); identities on one process ---
    @property
    def world_size(self) -> int:
        """Processes training together (1 without DDP)."""

    def global_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average over the ranks of a parameter gradient or Jacobian of the losses: the union's."""

    def global_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks of statistics that add up over samples."""

    def gradients(self, loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The union's d loss / d params (zeros where unused), the graph kept."""

    def agree(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of a random draw the strategy makes itself."""

    def mark_global(self, params: Sequence[torch.Tensor]) -> None:
        """The ``.grad`` of ``params`` were written from reduced quantities: not averaged again."""


class Strategy(nn.Module, abc.ABC):
    """Base class; the default configuration is one optimizer over every parameter.

    Attributes:
        separate_networks: build one network per task (single-task learning).
        supports_fp16_scaler: True when the strategy makes exactly one optimizer step per
            mini-batch from gradients that all went through ``manual_backward``: the only case in
            which Lightning's ``16-mixed`` gradient scaler is correct (one ``scaler.update()`` per
            iteration, every ``.grad`` scaled). Strategies that step several times (MTL-IO) or write
            gradients from ``autograd.grad`` (Jacobian methods, GradNorm's weights, MAO) are refused
            under ``16-mixed``; ``bf16-mixed`` needs no scaler and works with all of them.
    """

    separate_networks: bool = False
    supports_fp16_scaler: bool = True
    #: False when the update does not come from ``.grad`` (MAO): gradient_clip_val is refused
    supports_gradient_clipping: bool = True
    #: True when the strategy draws its own per-task batches (``ctx.task_batch``) and so trains task
    #: sets whose tasks have different datasets and inputs (MedMNIST); the others need one batch
    #: labelled for every task
    uses_task_batches: bool = False
    #: True when the strategy reads validation batches while training (``ctx.task_batch(VALIDATION)``,
    #: Auto-Lambda): refused for data without a validation split
    uses_validation_batches: bool = False
    #: True when each batch is split in two independent halves (MoDo, SDMGrad, MOML): it needs
    #: batches of 2 samples or more (:func:`batch_halves`)
    halves_batches: bool = False
    #: True when one forward of the network serves several backward passes (retain_graph: per-task
    #: gradients or Jacobians of one forward); ``speed.compile`` is refused for these
    #: (:func:`medmtl.speed.check_compile`)
    reuses_forward_graph: bool = False
    #: True when the strategy needs every task's head to be one linear layer on a shared vector
    #: (``model.readout_layer``: BayesAgg-MTL); other networks are refused in one sentence
    needs_linear_readout: bool = False

    def setup(self, task_names: list[str]) -> None:
        """Called once by the module with the task set, before optimizers exist: create per-task
        parameters (learnable weights) and buffers (statistics) here."""

    def configure_optimizers(self, model: MultiTaskNet, optimizer_factory: OptimizerFactory) -> list[torch.optim.Optimizer]:
        return [optimizer_factory(list(model.parameters()) + list(self.parameters()))]

    def task_optimizer_index(self, task: str) -> int | None:
        """The index of the optimizer that applies task ``task``'s updates, when each task has its
        own (MTL-IO); None when one optimizer serves every task (read by the diagnostics)."""
        return None

    @abc.abstractmethod
    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        """Run one iteration; return the (detached) values to log, e.g. ``loss/<task>``."""

    def on_train_epoch_end(self, epoch: int) -> None:
        """Hook for epoch-level state (loss histories)."""

    def check_distributed(self, world_size: int) -> None:
        """Refuse, in one sentence, a configuration that cannot be exact on ``world_size`` ranks."""

    @staticmethod
    def stacked_losses(ctx: StepContext, batch: Batch) -> tuple[dict[str, torch.Tensor], list[str], torch.Tensor] | None:
        """One forward of every task; (losses, names of the present tasks, their stacked losses),
        or None when no task is labelled in the batch."""
        losses = ctx.losses(ctx.forward(batch), batch)
        if not losses:
            return None
        names = list(losses)
        return losses, names, torch.stack([losses[n] for n in names])

    @staticmethod
    def detached(losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"loss/{name}": value.detach() for name, value in losses.items()}


def clip_shared_gradients(model: MultiTaskNet, max_norm: float) -> None:
    """Clip the shared parameters' gradient to the global norm ``max_norm`` (0: no-op); the heads'
    is left alone. Under DDP it is already the union's, so every rank clips alike (the authors' code
    of FAMO and NTKMTL clips it at 1.0)."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.shared_parameters() if p.grad is not None], max_norm)


def batch_halves(ctx: StepContext, batch: Batch, strategy: str) -> tuple[Batch, Batch]:
    """The first and second half of ``batch`` (its per-sample entries split, the rest shared), for
    the strategies that need two independent samples of one batch; one sentence for a batch of one."""
    size = ctx.inputs(batch)[0].shape[0]
    if size < 2:
        raise ConfigError(f"optim={strategy} splits each batch in two: it needs batches of 2 samples or more.")
    return tuple(  # type: ignore[return-value]
        {k: v[part] if v.shape[:1] == (size,) else v for k, v in batch.items()}
        for part in (slice(0, size // 2), slice(size // 2, size))
    )


def task_order(tasks: Sequence[Task], order: Sequence[str] | None) -> list[str]:
    """The configured task order, checked against the task set; the dataset's order by default."""
    names = [t.name for t in tasks]
    if order is None:
        return names
    if sorted(order) != sorted(names):
        raise ConfigError(f"optim.strategy.order must be a permutation of {names}, got {list(order)}.")
    return list(order)
