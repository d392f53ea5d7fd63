"""Strategies whose shared update is a combination sum_k a_k g_k of the task gradients.

PCGrad, MGDA, IMTL-G, CAGrad, UPGrad, Aligned-MTL, DualProj, ... all choose weights a that
depend only on the Gramian G = J J^T of the task Jacobian J (T x |W|, row k = g_k = dL_k/dW over
the shared parameters W) and sometimes on the losses. Two ways to compute the update
(``mode``):

- ``jacobian`` (default): J is materialised from the retained graph (``jacobian_method``: ``loop``,
  T ``autograd.grad`` calls, or ``batched``, one vmapped call of T vector-Jacobian products),
  G = J J^T, and the update a^T J is a matrix product written into ``.grad``. Memory: T x |W|.
  On an H100 (benchmarks/results/strategies_h100.md) ``loop`` is both faster and leaner than
  ``batched``: vmap lacks batching rules for some backward ops of the U-Net and falls back.
- ``gramian``: G is accumulated layer by layer by torchjd's autogram engine without ever holding J,
  then the update is ONE backward of sum_k a_k L_k through ``manual_backward``. J is never held,
  but the engine needs ``batch_dim=None`` with batch norm in the network: on the U-Net it is
  slower (about 5x vanilla) and not leaner than ``jacobian`` (benchmarks/results/).

- ``representation`` (the "-UB" variants of Sener & Koltun): the task gradients are taken with
  respect to the shared representation Z (``model.representation``) instead of W: one batched
  backward through the heads only gives J_Z (T x |Z|), the weights come from J_Z J_Z^T, and one
  backward through the shared layers applies (a^T J_Z) to Z. Cost close to vanilla; an upper
  bound of the W objective rather than the exact one. Layers shared by the tasks but after Z
  (MTI-Net's refinements and feature propagation, which mix the tasks' features) receive, like the
  heads, the gradient of the summed losses: the combination applies at Z, where the paper puts it.
  (They received nothing before, and stayed at their initial weights.)

Heads always receive their own task's gradient only (a backward of sum_k L_k restricted to the
head parameters: head k depends on L_k alone). Tasks absent from the batch are left out of J.

Aggregators that need J itself (Nash-MTL) set ``needs_jacobian`` and run in ``jacobian`` mode.
Subclasses may transform the losses before J is taken (``transform_losses``: IMTL's learned
scales); a strategy's own parameters then receive the gradient of the sum of the transformed losses.

Under DDP (:mod:`medmtl.distributed`): ``jacobian`` mode averages J over the ranks (T x |W|
numbers) before aggregating; ``representation`` mode reduces only the T x T Gramian of the
representation gradients, additive over samples (G = sum_r G_r / R^2), and applies the weights
to each rank's own J_Z; ``gramian`` mode is refused (the Gramian of the union's parameter Jacobian
is not a function of the ranks' Gramians), as is ``representation`` mode for aggregators that read
J_Z itself (its rows live on different ranks).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext, Strategy, clip_shared_gradients

if TYPE_CHECKING:
    from torchjd.autogram import Engine

MODES = ("jacobian", "gramian", "representation")


JACOBIAN_METHODS = ("batched", "loop")


def task_jacobian(losses: torch.Tensor, params: Sequence[torch.Tensor], method: str = "loop") -> torch.Tensor:
    """(T, n) matrix whose row k is dL_k/dparams; the graph is retained.

    ``batched``: one ``autograd.grad`` call with ``is_grads_batched=True`` (vmap over the T
    vector-Jacobian products). ``loop``: T ``autograd.grad`` calls, one per task; faster where
    vmap has no batching rule for an op of the backward (it then loops per op internally).
    """
    t = losses.shape[0]
    params = list(params)
    if method == "batched":
        eye = torch.eye(t, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True, retain_graph=True, allow_unused=True)
        per_param: list[torch.Tensor | None] = [g.reshape(t, -1) if g is not None else None for g in grads]
    elif method == "loop":
        rows = [torch.autograd.grad(losses[k], params, retain_graph=True, allow_unused=True) for k in range(t)]
        per_param = []
        for i, p in enumerate(params):
            column = [rows[k][i] for k in range(t)]
            per_param.append(
                torch.stack([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g in column])
                if any(g is not None for g in column)
                else None
            )
    else:
        raise ConfigError(f"jacobian method must be one of {JACOBIAN_METHODS}, got {method!r}.")
    return torch.cat([g if g is not None else losses.new_zeros(t, p.numel()) for g, p in zip(per_param, params)], dim=1)


def gramian_of(jacobian: torch.Tensor) -> torch.Tensor:
    """J J^T in float32 at least, outside autocast (a bf16 Gramian loses the small inner products
    that decide conflicts, and the solvers need float)."""
    with torch.autocast(jacobian.device.type, enabled=False):
        matrix = jacobian.detach().to(torch.promote_types(jacobian.dtype, torch.float32))
        return matrix @ matrix.T


def write_flat_gradient(params: Sequence[nn.Parameter], flat: torch.Tensor) -> None:
    """Accumulate a flat vector into ``.grad`` of ``params`` (in order)."""
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = chunk.clone() if p.grad is None else p.grad + chunk
        offset += n


class GradientCombination(Strategy):
    """Base class; subclasses implement :meth:`combination_weights`."""

    needs_jacobian: bool = False
    supports_fp16_scaler = False
    #: > 0: the shared parameters' gradient is clipped to this global norm before the step (the
    #: authors' code of NTKMTL, as of CAGrad and Nash-MTL, clips it at 1.0); the heads' is not
    shared_max_norm: float = 0.0

    @property
    def reuses_forward_graph(self) -> bool:  # type: ignore[override]
        """T backward passes through one forward, except in representation mode (whose passes run
        from the heads to the representation, outside the network's forward)."""
        return self.mode != "representation"

    def __init__(self, mode: str = "jacobian", jacobian_method: str = "loop"):
        super().__init__()
        if jacobian_method not in JACOBIAN_METHODS:
            raise ConfigError(f"optim.strategy.jacobian_method must be one of {JACOBIAN_METHODS}, got {jacobian_method!r}.")
        self.jacobian_method = jacobian_method
        if mode not in MODES:
            raise ConfigError(f"optim.strategy.mode must be one of {MODES}, got {mode!r}.")
        if mode == "gramian" and self.needs_jacobian:
            raise ConfigError(f"{type(self).__name__} needs the Jacobian itself: use mode=jacobian.")
        self.mode = mode
        self._engine: Engine | None = None

    def reads_jacobian(self) -> bool:
        """The aggregation reads the Jacobian itself, not only its Gramian (refused in
        representation mode under DDP)."""
        return self.needs_jacobian

    def check_distributed(self, world_size: int) -> None:
        if world_size == 1:
            return
        if self.mode == "gramian":
            raise ConfigError(
                "optim.strategy.mode=gramian cannot be distributed exactly (the union's Gramian is not the sum of the "
                "ranks' Gramians of parameter Jacobians): use mode=jacobian with DDP."
            )
        if self.mode == "representation" and self.reads_jacobian():
            raise ConfigError(
                f"{type(self).__name__} reads the representation Jacobian itself, whose rows live on different ranks "
                "under DDP: use mode=jacobian."
            )

    @abc.abstractmethod
    def combination_weights(
        self,
        gramian: torch.Tensor,
        losses: torch.Tensor,
        jacobian: torch.Tensor | None = None,
        names: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Weights a (T,) of the shared update sum_k a_k g_k (``names``: the present tasks, in the
        order of the rows)."""

    def shared_update(
        self, jacobian: torch.Tensor, losses: torch.Tensor, names: Sequence[str], gramian: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The update of the shared parameters (or of the representation) from the task Jacobian
        and the weights to log: a^T J here, a from ``gramian`` (default J J^T); aggregators that are
        not a combination of the rows (GradDrop) override it and log no weights."""
        gramian = gramian_of(jacobian) if gramian is None else gramian
        weights = self.combination_weights(gramian, losses, jacobian, names=names)
        return weights.to(jacobian.dtype) @ jacobian, weights

    def representation_update(
        self,
        ctx: StepContext,
        jacobian: torch.Tensor,
        losses: torch.Tensor,
        names: Sequence[str],
        gramian: torch.Tensor,
        representation: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The update of the representation in ``representation`` mode: :meth:`shared_update` here;
        a method that also reads the representation's values (GradDrop) overrides it."""
        return self.shared_update(jacobian, losses, names, gramian)

    def transform_losses(self, stacked: torch.Tensor, names: list[str]) -> torch.Tensor:
        """The losses whose Jacobian is combined (identity here)."""
        return stacked

    def head_inputs(self, model, names: list[str]) -> list[torch.Tensor]:
        """What the backward of the summed losses reaches: the present tasks' heads (each depends on
        its own loss alone) and the strategy's own learnable parameters."""
        own = [p for p in self.parameters() if p.requires_grad]
        return [p for n in names for p in model.head_parameters(n)] + own

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        if self.mode == "representation":
            return self._representation_step(ctx, batch)
        self._ensure_engine(ctx.model)
        found = self.stacked_losses(ctx, batch)
        if found is None:
            return {}
        losses, names, stacked = found
        stacked = self.transform_losses(stacked, names)
        model = ctx.model
        shared = model.shared_parameters()
        heads = self.head_inputs(model, names)
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        if self.mode == "jacobian":
            jacobian = ctx.global_mean(task_jacobian(stacked, shared, self.jacobian_method).detach())
            update, weights = self.shared_update(jacobian, stacked.detach().float(), names)
            write_flat_gradient(shared, update)
            ctx.mark_global(shared)
            ctx.backward(stacked.sum(), inputs=heads)
        else:
            gramian = self._gramian(model, stacked)
            weights = self.combination_weights(gramian.detach().float(), stacked.detach().float(), names=names)
            ctx.backward(stacked @ weights.to(stacked.dtype), inputs=shared, retain_graph=True)
            ctx.backward(stacked.sum(), inputs=heads)
        ctx.clip_gradients(optimizer)
        clip_shared_gradients(model, self.shared_max_norm)
        optimizer.step()
        return self.logged(losses, stacked, names, weights)

    @staticmethod
    def logged(losses, stacked: torch.Tensor, names: list[str], weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
        logged = Strategy.detached(losses) | {"loss/total": stacked.sum().detach()}
        if weights is None:
            return logged
        return logged | {f"weight/{n}": w for n, w in zip(names, weights.detach().float())}

    def _representation_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        model = ctx.model
        shared = model.representation(*ctx.inputs(batch))
        detached = {k: v.detach().requires_grad_() for k, v in shared.items()}
        losses = ctx.losses(model.heads(detached), batch)
        if not losses:
            return {}
        names = list(losses)
        stacked = self.transform_losses(torch.stack([losses[n] for n in names]), names)
        keys = list(detached)
        jacobian = task_jacobian(stacked, [detached[k] for k in keys], self.jacobian_method).detach()
        # the union's Gramian of representation gradients: sum_r G_r / R^2 (module docstring)
        gramian = ctx.global_mean(gramian_of(jacobian)) / ctx.world_size
        values = [detached[k].detach() for k in keys]
        combined, weights = self.representation_update(ctx, jacobian, stacked.detach().float(), names, gramian, values)
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        # the heads, and any shared layer after Z (MTI-Net's refinements and feature propagation), get
        # the gradient of the summed losses; the layers before Z are cut off by the detached Z
        ctx.backward(stacked.sum(), inputs=self.head_inputs(model, names) + model.shared_parameters())
        # sum_i <Z_i, c_i> has gradient J_Z^T c through the shared layers: a^T J_Z pulled back to W
        surrogate = sum(
            (shared[k] * c.view_as(shared[k])).sum() for k, c in zip(keys, combined.split([detached[k].numel() for k in keys]))
        )
        ctx.backward(surrogate)
        ctx.clip_gradients(optimizer)
        clip_shared_gradients(model, self.shared_max_norm)
        optimizer.step()
        return self.logged(losses, stacked, names, weights)

    def _gramian(self, model, losses: torch.Tensor) -> torch.Tensor:
        assert self._engine is not None  # made by _ensure_engine before the forward
        return self._engine.compute_gramian(losses)

    def _ensure_engine(self, model) -> None:
        """torchjd's engine hooks the shared modules; it must exist before their forward."""
        if self.mode == "gramian" and self._engine is None:
            from torchjd.autogram import Engine

            self._engine = Engine(*model.shared_modules(), batch_dim=None)
