"""``ldc_mtl``: loss discrepancy control (Xiao, Dong, Zou and Ji 2025, LDC-MTL), as the authors'
code computes it for dense prediction (their NYUv2 trainer).

Bilevel view: the network x minimises the weighted loss (lower level) while task weights w minimise
the discrepancy between the weighted, pre-normalised losses (upper level); their first-order
penalty algorithm takes one step of both on one objective, so the cost is one forward and one
backward, as ``vanilla``. One iteration:

    r_k     = L_k(0) / min_j L_j(0)                    pre-normalisation (first step's losses)
    l_k     = L_k / r_k
    w       = clamp(softmax(A z + b), w_min, w_max)    the router; z = the batch mean of the
                                                       spatially pooled shared representation
    F       = sum_k w_k l_k / sum_k w_k  +  lambda sum_k |w_k l_k - w_{k+1} l_{k+1}|
    one backward of F; one optimizer step of the network and the router (A, b) together.

lambda = ``lamb`` (their NYUv2 script 0.05; Cityscapes 0.1, QM9 0.05, CelebA 0.01). The router's
input is not detached and sum_k w_k is differentiated, as in their NYUv2 code, so F's gradient
also reaches the network through z. The router is a ``LazyLinear`` (its input width is the
network's, known at the first step), torch's default initialisation drawn on rank 0; until that
step its parameters are torch's uninitialised (lazy) parameters, which an optimizer may already
hold, and a checkpoint of any run sizes them when loaded.

What the authors' per-dataset trainers do differently, available as options (the paper's numbers
come from each dataset's own script):

- ``weighting``: ``router`` (NYUv2, Cityscapes) or ``free`` (CelebA: w = sigmoid(xi), free
  logits xi initialised at 1; the clamp does not apply);
- ``normalisation``: ``initial_ratio`` (NYUv2, r_k above), ``initial_log`` (QM9: l_k =
  log(L_k / L_k(0))) or ``none`` (CelebA, Cityscapes: l_k = L_k);
- ``weight_sum``: ``differentiable`` (NYUv2), ``detached`` (CelebA, QM9: sum_k w_k held constant)
  or ``none`` (Cityscapes: no division).

Their router reads the task-specific decoder features (pooled, concatenated) of their MTAN; ours
reads the shared representation (``model.representation``: every tensor pooled over its spatial
axes and concatenated), which every network here exposes. Cityscapes' script also penalises the
unweighted |L_1 - L_2|; that variant is not offered.

Partial labels: the sums and the discrepancy run over the tasks present in the batch, consecutive
in task order; sum_k w_k is over every task, so a task's effective weight does not depend on which
others are present. L_k(0) is the first positive loss seen for task k, min_j L_j(0) the smallest
of the first step's (fixed from then on). Under DDP z is the union's batch mean (value the union's,
gradient averaging to the union's, like the losses: :mod:`medmtl.distributed`), so F and its
gradient equal one process's on the union.
"""

from __future__ import annotations

import torch
from torch import nn

from medmtl.distributed import union_valued
from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext, Strategy

WEIGHTINGS = ("router", "free")
NORMALISATIONS = ("initial_ratio", "initial_log", "none")
WEIGHT_SUMS = ("differentiable", "detached", "none")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"optim.strategy.{key} must be one of {', '.join(allowed)}, got {value!r}.")
    return value


def pooled_batch_mean(ctx: StepContext, shared: dict[str, torch.Tensor]) -> torch.Tensor:
    """The union's batch mean of the representation pooled over its spatial axes, (C,): every
    tensor (N, C, ...) averaged over its axes after the second and concatenated along C. Under DDP
    the value is the union's and the gradient averages to the union's (:func:`union_valued`)."""
    per_sample = torch.cat([t.flatten(2).mean(2) if t.dim() > 2 else t for t in shared.values()], dim=1)
    local = per_sample.mean(0)
    if ctx.world_size == 1:
        return local
    n = per_sample.shape[0]
    totals = ctx.global_sum(torch.cat([local.detach().double() * n, local.new_tensor([n], dtype=torch.float64)]))
    count = float(totals[-1])
    return union_valued(local, ctx.world_size * n / count, totals[:-1] / count)


def _forget_recorded(module: LossDiscrepancyControl, incompatible_keys) -> None:
    """After a checkpoint load the recorded tasks are read from the loaded buffer again."""
    module._recorded = None


class LossDiscrepancyControl(Strategy):
    initial_losses: torch.Tensor
    reference_loss: torch.Tensor

    def __init__(
        self,
        lamb: float = 0.05,
        weighting: str = "router",
        normalisation: str = "initial_ratio",
        weight_sum: str = "differentiable",
        clamp: tuple[float, float] | list[float] = (0.2, 0.8),
    ):
        super().__init__()
        if isinstance(lamb, bool) or not isinstance(lamb, (int, float)) or not lamb >= 0:
            raise ConfigError(f"optim.strategy.lamb must be a number >= 0, got {lamb!r}.")
        self.lamb = float(lamb)
        self.weighting = _choice("weighting", weighting, WEIGHTINGS)
        self.normalisation = _choice("normalisation", normalisation, NORMALISATIONS)
        self.weight_sum = _choice("weight_sum", weight_sum, WEIGHT_SUMS)
        bounds = [float(v) for v in clamp]
        if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1] <= 1:
            raise ConfigError(f"optim.strategy.clamp must be [low, high] with 0 <= low < high <= 1, got {list(clamp)!r}.")
        self.clamp = (bounds[0], bounds[1])

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        count = len(self.task_names)
        self.register_buffer("initial_losses", torch.full((count,), float("nan")))
        self.register_buffer("reference_loss", torch.tensor(float("nan")))
        if self.weighting == "router":
            self.router = nn.LazyLinear(count)
        else:
            self.logits = nn.Parameter(torch.ones(count))
        self._recorded: set[str] | None = None  # tasks whose L_k(0) is known: read from the buffer once
        self.register_load_state_dict_post_hook(_forget_recorded)

    # --- the pieces of F ---

    def task_weights(self, ctx: StepContext, shared: dict[str, torch.Tensor]) -> torch.Tensor:
        """w for every task (indexed like ``task_names``)."""
        if self.weighting == "free":
            return torch.sigmoid(self.logits)
        dtype = next(ctx.model.parameters()).dtype
        z = pooled_batch_mean(ctx, shared).to(dtype)
        if isinstance(self.router.weight, nn.parameter.UninitializedParameter):  # first step (a resumed run loads A, b instead)
            self.router(z.detach().to(self.router.weight.dtype))  # materialises A, b with torch's default initialisation
            self.router.to(device=z.device, dtype=dtype)  # in place: the optimizer keeps them
            with torch.no_grad():
                for p in self.router.parameters():
                    p.copy_(ctx.agree(p))
        return torch.softmax(self.router(z), dim=-1).clamp(*self.clamp)

    def recorded(self) -> set[str]:
        """The tasks whose L_k(0) is known (read from the buffer once, after construction or a
        checkpoint load, so that later steps make no host round trip for it)."""
        if self._recorded is None:
            known = (~torch.isnan(self.initial_losses)).tolist()
            self._recorded = {n for n, k in zip(self.task_names, known) if k}
        return self._recorded

    def record_initial_losses(self, losses: dict[str, torch.Tensor]) -> None:
        recorded = self.recorded()
        first = not recorded
        for name, loss in losses.items():
            if name not in recorded and bool(loss.detach() > 0):
                self.initial_losses[self.task_names.index(name)] = loss.detach().float()
                recorded.add(name)
        if first and recorded:  # the first step with a recorded loss fixes min_j L_j(0)
            self.reference_loss.copy_(torch.stack([self.initial_losses[self.task_names.index(n)] for n in recorded]).min())

    def normalised(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        """l_k: the task's loss after the pre-normalisation (unchanged until L_k(0) is known)."""
        if self.normalisation == "none" or name not in self.recorded():
            return loss
        initial = self.initial_losses[self.task_names.index(name)]
        if self.normalisation == "initial_log":
            return torch.log(loss / initial.to(loss.dtype))
        return loss * (self.reference_loss / initial).to(loss.dtype)

    def objective(self, weights: torch.Tensor, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """F over the present tasks, in task order."""
        names = [n for n in self.task_names if n in losses]
        w = torch.stack([weights[self.task_names.index(n)] for n in names])
        weighted = w.to(losses[names[0]].dtype) * torch.stack([self.normalised(n, losses[n]) for n in names])
        total = weighted.sum()
        if self.weight_sum != "none":
            norm = weights.sum()
            total = total / (norm.detach() if self.weight_sum == "detached" else norm).to(total.dtype)
        if len(names) > 1:
            total = total + self.lamb * (weighted[:-1] - weighted[1:]).abs().sum()
        return total

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        model = ctx.model
        if self.weighting == "router":
            shared = model.representation(*ctx.inputs(batch))
            outputs = model.heads(shared)
        else:
            shared, outputs = {}, ctx.forward(batch)
        losses = ctx.losses(outputs, batch)
        if not losses:
            return {}
        self.record_initial_losses(losses)
        weights = self.task_weights(ctx, shared)
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        total = self.objective(weights, losses)
        ctx.backward(total)
        ctx.clip_gradients(optimizer)
        optimizer.step()
        logged = self.detached(losses) | {"loss/total": total.detach()}
        return logged | {f"weight/{n}": w for n, w in zip(self.task_names, weights.detach().float())}
