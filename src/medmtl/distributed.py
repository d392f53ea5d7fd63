"""Exact data-parallel training: what crosses the ranks, and when.

With R processes, each holding a local mini-batch B_r of n_r labelled samples, one iteration must
produce the update that one process would compute on the union B = B_1 u ... u B_R. PyTorch's
``DistributedDataParallel`` averages ``.grad`` during a backward, which is exact for one backward of
one scalar per iteration and wrong for everything else this library does: per-task gradients from
``autograd.grad`` (never all-reduced), several optimizer steps per batch (MTL-IO), weights computed
from local losses (ranks would drift apart). So the model is not wrapped (:class:`medmtl.lightning_ddp.ExactDDPStrategy`
keeps Lightning's process launch, process group, SLURM environment and samplers) and the training
context reduces, explicitly and once, what each strategy reads:

- **loss values** (T numbers per ``ctx.losses`` call): every rank sees the union's loss
  L_k = sum_r n_r L_k^r / sum_r n_r. The local loss becomes
  ``s_r L_k^r + (L_k - s_r L_k^r).detach()`` with s_r = R n_r / sum_r n_r: its *value* is the
  global loss (weights from losses: DWA, GradNorm's targets, FAMO, STCH, the non-finite guard all
  agree across ranks) and its *gradient* is s_r dL_k^r, whose average over ranks is dL_k: any
  f(L) back-propagated locally and averaged is f'(L) dL, the single-process gradient.
- **gradients in ``.grad``** (|P| numbers, one flat all-reduce per optimizer step): averaged
  before clipping and stepping (:class:`SynchronizedOptimizer`), for every strategy.
- **task Jacobians of parameters** (T x |W|): averaged (``ctx.global_mean``) before aggregation:
  PCGrad, MGDA, the torchjd aggregators, GradNorm's last shared layer, MAO, DB-MTL, MoCo,
  Auto-Lambda. What they then write into ``.grad`` is marked global (``ctx.mark_global``) and not
  averaged again.
- **Gramians of representation gradients** (T x T; the -UB modes): additive over samples, so the
  union's Gramian is sum_r G_r / R^2 (the 1/R of the mean loss, squared).

The ranks start training from rank 0's random states and draw alike from then on; what a
strategy draws itself is drawn on rank 0 and broadcast (``ctx.agree``). Batch norm
statistics stay local unless ``trainer.sync_batchnorm=true``; evaluation and checkpoints see rank
0's buffers (what DDP's buffer broadcast gives). On one process every operation here is the
identity and costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist


def data_parallel_rank() -> tuple[int, int]:
    """(rank, number of ranks) of this process in the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def union_valued(local: torch.Tensor, share: float, union: torch.Tensor) -> torch.Tensor:
    """A rank's mean over its n_r samples, valued as the union's: the value is ``union`` (the mean
    over all N samples) and the gradient s_r d(local) with ``share`` s_r = R n_r / N, whose average
    over the ranks is the union's gradient (the module docstring's rule for losses)."""
    scaled = local * share
    return scaled + (union.to(scaled.dtype) - scaled.detach())


class Reducer:
    """Collective operations over the default process group (identity on one process).

    ``bytes_communicated`` counts the payload of every collective issued by this rank (what the
    communication benchmark reports per iteration)."""

    def __init__(self) -> None:
        self.rank, self.world_size = data_parallel_rank()
        self.bytes_communicated = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def _all_reduce(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        result = tensor.detach().clone()
        dist.all_reduce(result, op=op or dist.ReduceOp.SUM)
        self.bytes_communicated += result.numel() * result.element_size()
        return result

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """sum_r tensor_r (detached)."""
        return self._all_reduce(tensor) if self.distributed else tensor

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """(1/R) sum_r tensor_r (detached): the global value of anything additive over samples
        whose losses are means (parameter gradients and Jacobians)."""
        return self._all_reduce(tensor) / self.world_size if self.distributed else tensor

    def agree(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's value on every rank (random draws a strategy makes itself)."""
        if not self.distributed:
            return tensor
        result = tensor.detach().clone().contiguous()
        dist.broadcast(result, src=0)
        self.bytes_communicated += result.numel() * result.element_size()
        return result

    def share_random_states(self) -> None:
        """Rank 0's global random states (Python, NumPy, torch CPU and CUDA) on every rank, so
        that the draws the ranks make alike (PCGrad's order, torchjd's random aggregators) agree
        whatever seeded each process."""
        if not self.distributed:
            return
        from medmtl.utils.rng import collect_rng_states, restore_rng_states

        states: list[Any] = [collect_rng_states() if self.rank == 0 else None]
        dist.broadcast_object_list(states, src=0)
        restore_rng_states(states[0])

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (pickled; for evaluation records and checkpoints)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def global_losses(
        self,
        losses: dict[str, torch.Tensor],
        counts: dict[str, int],
        names: Sequence[str],
        zero_of: Callable[[str], torch.Tensor],
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """Losses whose values are the union's and whose gradients average to the union's (module
        docstring). ``names``: the tasks asked for, in order (the same on every rank); ``counts``:
        each local loss's labelled samples; ``zero_of(task)``: a zero that carries the graph, for a
        task labelled on another rank only (it still takes part in every rank's backward)."""
        if not self.distributed or not names:
            return losses
        local = torch.zeros(2, len(names), dtype=torch.float64, device=device)
        for i, name in enumerate(names):
            if name in losses:
                local[0, i] = counts[name] * losses[name].detach().double()
                local[1, i] = counts[name]
        total = self._all_reduce(local)
        result = {}
        for i, name in enumerate(names):
            samples = float(total[1, i])
            if samples == 0:
                continue  # labelled on no rank: absent everywhere
            if name in losses:
                result[name] = union_valued(losses[name], self.world_size * counts[name] / samples, total[0, i] / samples)
            else:
                zero = zero_of(name)
                result[name] = zero + (total[0, i] / samples).to(zero.dtype)
        return result


class GradientSync:
    """Averages ``.grad`` over ranks before an optimizer uses it, once per step; parameters whose
    ``.grad`` already holds the global gradient (written from a reduced Jacobian) are marked and
    skipped. A parameter that has a gradient on any rank gets one on every rank (zeros where it
    had none), so that the optimizers' updates agree."""

    def __init__(self, reducer: Reducer):
        self.reducer = reducer
        self._global: set[int] = set()

    def mark_global(self, params: Iterable[torch.Tensor]) -> None:
        self._global.update(id(p) for p in params)

    def forget(self, params: Iterable[torch.Tensor]) -> None:
        self._global.difference_update(id(p) for p in params)

    def synchronize(self, params: Sequence[torch.Tensor]) -> None:
        if not self.reducer.distributed:
            return
        pending = [p for p in params if id(p) not in self._global]
        if not pending:
            return
        local = torch.tensor([p.grad is not None for p in pending], dtype=torch.uint8, device=pending[0].device)
        anywhere = self.reducer._all_reduce(local, dist.ReduceOp.MAX).bool().tolist()
        chosen = [p for p, flag in zip(pending, anywhere) if flag]
        if chosen:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in chosen])
            flat = self.reducer.mean(flat)
            offset = 0
            for p in chosen:
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
                offset += p.numel()
        self.mark_global(pending)


def innermost_optimizer(optimizer):
    """The optimizer under the context's wrappers (Lightning's, or torch's)."""
    while hasattr(optimizer, "unwrapped"):
        optimizer = optimizer.unwrapped
    return optimizer


def torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under the context's wrappers and Lightning's."""
    inner = innermost_optimizer(optimizer)
    return getattr(inner, "optimizer", inner)


def optimizer_parameters(optimizer) -> list[torch.Tensor]:
    return [p for group in torch_optimizer(optimizer).param_groups for p in group["params"]]


class SynchronizedOptimizer:
    """An optimizer whose ``step`` (and the context's clipping) sees the global gradients."""

    def __init__(self, optimizer: Any, sync: GradientSync):
        self.unwrapped, self._sync = optimizer, sync

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer inside the wrappers."""
        return torch_optimizer(self.unwrapped)

    def synchronize(self) -> None:
        self._sync.synchronize(optimizer_parameters(self.unwrapped))

    def step(self, *args, **kwargs):
        self.synchronize()
        result = self.unwrapped.step(*args, **kwargs)
        self._sync.forget(optimizer_parameters(self.unwrapped))
        return result

    def zero_grad(self, *args, **kwargs):
        self._sync.forget(optimizer_parameters(self.unwrapped))
        return self.unwrapped.zero_grad(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.unwrapped, name)


def broadcast_buffers(module: torch.nn.Module, reducer: Reducer) -> None:
    """Rank 0's buffers (batch norm statistics) on every rank, in place."""
    if not reducer.distributed:
        return
    for buffer in module.buffers():
        buffer.copy_(reducer.agree(buffer))
