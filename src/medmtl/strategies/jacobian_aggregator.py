"""Any Jacobian aggregator of ``torchjd`` as a strategy (``optim=jd_<name>``).

torchjd implements and tests CAGrad, Nash-MTL, IMTL-G, Aligned-MTL, UPGrad, DualProj, MGDA,
PCGrad, FairGrad, GradVac, PCD, ExcessMTL, Krum, ... as *weightings*: functions of the Gramian G = J J^T
(or of J itself: Nash-MTL, ExcessMTL) that return the weights a of the update sum_k a_k g_k, and
ConFIG, GradDrop and TrimmedMean as *aggregators* of J whose update is not such a combination, and MoDo and
SDMGrad as weightings of A = J_1 J_2^T, the product of the Jacobians of two independent
mini-batches (double sampling: an unbiased estimate of J J^T). This one class
plugs any of them into :class:`~medmtl.strategies.gradient_combination.GradientCombination`, which
computes J or G efficiently and applies the result; no aggregator is re-implemented here.

Stateful ones (Nash-MTL, GradVac, PCD, ExcessMTL, and any weighting wrapped in CR-MOGM's weight
average, ``cr_mogm_alpha``) keep one instance per set of present tasks, so that partial labels never
mix the statistics of different task sets; their state is in the strategy's extra state, hence in
every checkpoint, so that a resumed run computes the weights an uninterrupted one does.

Cost: that of the mode (``jacobian``: one forward, T backward passes, a T x |W| Jacobian; see
:mod:`~medmtl.strategies.gradient_combination`) plus the aggregator's T x T problem; ExcessMTL
keeps another T x |W| (its squared-gradient sums); MoDo and SDMGrad one forward of the batch and
of each half, T backward passes per half and one for the update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.strategies import device_solvers
from medmtl.strategies.base import Batch, StepContext, batch_halves
from medmtl.strategies.gradient_combination import GradientCombination, task_jacobian

#: name -> (torchjd class name, what it reads: "gramian", "jacobian" (a weighting of J),
#: "aggregator" (maps J to the update itself) or "cross" (J_1 J_2^T of two independent halves of
#: the batch: the double sampling of MoDo and SDMGrad))
AGGREGATORS = {
    "upgrad": ("UPGradWeighting", "gramian"),
    "imtl_g": ("IMTLGWeighting", "gramian"),
    "aligned_mtl": ("AlignedMTLWeighting", "gramian"),
    "cagrad": ("CAGradWeighting", "gramian"),
    "dualproj": ("DualProjWeighting", "gramian"),
    "mgda": ("MGDAWeighting", "gramian"),
    "pcgrad": ("PCGradWeighting", "gramian"),
    "mean": ("MeanWeighting", "gramian"),
    "fairgrad": ("FairGradWeighting", "gramian"),
    "gradvac": ("GradVacWeighting", "gramian"),
    "pcd": ("PCDWeighting", "gramian"),
    "random": ("RandomWeighting", "gramian"),
    "nash_mtl": ("NashMTL", "jacobian"),
    "excess_mtl": ("ExcessMTLWeighting", "jacobian"),
    "krum": ("KrumWeighting", "gramian"),
    "config": ("ConFIG", "aggregator"),
    "graddrop": ("GradDrop", "aggregator"),
    "trimmed_mean": ("TrimmedMean", "aggregator"),
    "modo": ("MoDoWeighting", "cross"),
    "sdmgrad": ("SDMGradWeighting", "cross"),
}
#: aggregators whose T x T problem :mod:`~medmtl.strategies.device_solvers` solves on G's device
DEVICE_SOLVED = ("upgrad", "dualproj", "imtl_g", "cagrad")
SOLVERS = ("auto", "device", "host")
#: torchjd's weightings that raise their own error on a non-finite input (an SVD that does not
#: converge, cvxpy, scipy): without the device solvers, such an input gets NaN weights instead, and
#: the non-finite guard (``optim.nonfinite``) stops or skips the update in one sentence
FAIL_ON_NONFINITE = ("upgrad", "dualproj", "imtl_g", "cagrad", "nash_mtl", "fairgrad")
#: the paper defaults torchjd does not set itself
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "krum": {"n_byzantine": 0, "n_selected": 1},
    "trimmed_mean": {"trim_number": 1},
    "cagrad": {"c": 0.5, "rescale": 1},
    "fairgrad": {"alpha": 1.0},
    "aligned_mtl": {"pref_vector": "ones"},
}
#: options read here, not by torchjd: the scale of the update that the authors' code and LibMTL use
#: (CAGrad's ``rescale``: 0 none, 1 divide by 1 + c^2, 2 by 1 + c; Aligned-MTL's ``pref_vector``:
#: ``ones`` as the authors' code and LibMTL, ``uniform`` as torchjd's default 1/T)
SCALE_OPTIONS = {"cagrad": "rescale", "aligned_mtl": "pref_vector"}
#: integer counters torchjd keeps as plain attributes rather than buffers
COUNTERS = ("_n_steps",)


def device_weighting(aggregator: str, options: dict[str, Any]) -> nn.Module:
    """The weighting of ``aggregator`` (one of :data:`DEVICE_SOLVED`) with its T x T problem solved
    on the Gramian's device; ``options`` as torchjd's class takes them."""
    import torchjd.aggregation as aggregation

    if aggregator == "imtl_g":
        return device_solvers.DeviceIMTLGWeighting(**options)
    if aggregator == "cagrad":
        return device_solvers.DeviceCAGradWeighting(**options)
    class_name = AGGREGATORS[aggregator][0]
    return getattr(aggregation, class_name)(**({"projector": device_solvers.DeviceDualConeProjector()} | options))


def weighting_state(weighting: nn.Module) -> dict[str, torch.Tensor | None]:
    """The state of a stateful torchjd weighting (an ``nn.Module``): its buffers, None ones included,
    and its integer counters, keyed by ``<submodule path>.<name>``."""
    state: dict[str, torch.Tensor | None] = {}
    for path, module in weighting.named_modules():
        prefix = f"{path}." if path else ""
        for name, buffer in module._buffers.items():
            state[prefix + name] = None if buffer is None else buffer.detach().clone()
        for name in COUNTERS:
            value = module.__dict__.get(name)
            if isinstance(value, int):
                state[prefix + name] = torch.tensor(value)
    return state


def restore_weighting_state(weighting: nn.Module, state: dict[str, torch.Tensor | None], stat: torch.Tensor) -> None:
    """Put ``state`` back into a fresh ``weighting`` about to be called on ``stat``. torchjd sizes
    its state for the input on the first call (a private key of shape, dtype and device): one call
    on ``stat``, with the random generators restored after it, lets it do so; the saved values then
    replace what that call computed."""
    devices = [stat.device.index or 0] if stat.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        weighting(stat)
    for key, value in state.items():
        path, _, name = key.rpartition(".")
        module = weighting.get_submodule(path)
        if name in COUNTERS and name not in module._buffers:
            setattr(module, name, int(value.item()) if value is not None else 0)
        else:
            module.register_buffer(name, None if value is None else value.to(stat.device))


class ScaledWeighting(nn.Module):
    """A torchjd weighting whose weights are multiplied by a constant ``factor`` (the update
    sum_k a_k g_k scales with them)."""

    def __init__(self, weighting: nn.Module, factor: float):
        super().__init__()
        self.weighting, self.factor = weighting, factor

    def forward(self, stat: torch.Tensor, /) -> torch.Tensor:
        return self.weighting(stat) * self.factor


def update_scale(aggregator: str, options: dict[str, Any], task_count: int) -> float:
    """The factor of :data:`SCALE_OPTIONS` for ``aggregator`` (1 for the others)."""
    if aggregator == "cagrad":
        c, rescale = float(options.get("c", 0.5)), options.get("rescale", 0)
        return {0: 1.0, 1: 1 / (1 + c**2), 2: 1 / (1 + c)}[rescale]
    if aggregator == "aligned_mtl":
        return float(task_count) if options.get("pref_vector", "uniform") == "ones" else 1.0
    return 1.0


class JacobianAggregator(GradientCombination):
    """``aggregator``: a key of :data:`AGGREGATORS`; ``options``: keyword arguments of its torchjd
    class; ``cr_mogm_alpha``: wrap the weighting in CR-MOGM's moving average of the weights
    (Zhou et al. 2022), lambda_t = alpha lambda_{t-1} + (1 - alpha) lambda-hat_t (null: off);
    ``primary_task``: PCD's primary objective (default: the task set's first); ``solver``: where the
    small T x T problem of UPGrad, DualProj, IMTL-G and CAGrad is solved -- ``device`` (on the
    Gramian's device by face enumeration, no host round trip: :mod:`~medmtl.strategies.device_solvers`),
    ``host`` (torchjd's own quadprog / cvxpy / Python solvers) or ``auto`` (device up to
    :data:`~medmtl.strategies.device_solvers.MAX_TASKS` present tasks, host above)."""

    def __init__(
        self,
        aggregator: str,
        mode: str = "jacobian",
        options: dict[str, Any] | None = None,
        jacobian_method: str = "loop",
        cr_mogm_alpha: float | None = None,
        primary_task: str | None = None,
        solver: str = "auto",
    ):
        if aggregator not in AGGREGATORS:
            raise ConfigError(f"optim.strategy.aggregator must be one of {sorted(AGGREGATORS)}, got {aggregator!r}.")
        self.class_name, self.reads = AGGREGATORS[aggregator]
        self.halves_batches = self.reads == "cross"
        self.needs_jacobian = self.reads != "gramian"
        if self.reads == "cross" and mode != "jacobian":
            raise ConfigError(f"{aggregator} samples two half-batch Jacobians at W: use mode=jacobian.")
        if cr_mogm_alpha is not None and aggregator in ("config", "graddrop", "nash_mtl"):
            raise ConfigError(f"optim.strategy.cr_mogm_alpha averages torchjd weightings; not available for {aggregator}.")
        if solver not in SOLVERS:
            raise ConfigError(f"optim.strategy.solver must be one of {list(SOLVERS)}, got {solver!r}.")
        if solver == "device" and aggregator not in DEVICE_SOLVED:
            raise ConfigError(f"optim.strategy.solver=device exists for {list(DEVICE_SOLVED)}, not {aggregator}: use host.")
        super().__init__(mode, jacobian_method)
        self.aggregator_name = aggregator
        self.solver = solver
        self.options = DEFAULT_OPTIONS.get(aggregator, {}) | dict(options or {})
        if aggregator == "cagrad" and self.options.get("rescale") not in (0, 1, 2):
            raise ConfigError(f"optim.strategy.options.rescale of CAGrad must be 0, 1 or 2, got {self.options.get('rescale')!r}.")
        if aggregator == "aligned_mtl" and self.options.get("pref_vector") not in ("ones", "uniform"):
            raise ConfigError(
                "optim.strategy.options.pref_vector of Aligned-MTL must be ones or uniform, "
                f"got {self.options.get('pref_vector')!r}."
            )
        if solver == "device" and not self._device_solvable():
            raise ConfigError("optim.strategy.solver=device solves CAGrad for c > 0; c = 0 (the mean) needs solver=host or auto.")
        self.cr_mogm_alpha = cr_mogm_alpha
        self.primary_task = primary_task
        self._weightings: dict[str, Any] = {}
        self._pending: dict[str, Any] = {}

    def weighting(self, names: Sequence[str]):
        """The torchjd object for the present tasks ``names`` (made on first use)."""
        key = "|".join(names)
        if key not in self._weightings:
            import torchjd.aggregation as aggregation

            options = dict(self.options)
            if self.aggregator_name == "trimmed_mean":  # it needs 2 t + 1 rows: trim fewer when fewer tasks are present
                options["trim_number"] = min(int(options.get("trim_number", 1)), (len(names) - 1) // 2)
            scale = update_scale(self.aggregator_name, options, len(names))
            options.pop(SCALE_OPTIONS.get(self.aggregator_name, ""), None)
            if self.aggregator_name == "nash_mtl":
                options["n_tasks"] = len(names)
            made: Any
            if self.solves_on_device(len(names)):
                made = device_weighting(self.aggregator_name, options)
            elif self.aggregator_name == "krum" and len(names) < int(options.get("n_byzantine", 0)) + 3:
                made = aggregation.MeanWeighting()  # Krum needs f + 3 gradients: with fewer present, their mean
            else:
                made = getattr(aggregation, self.class_name)(**options)
            if self.aggregator_name == "nash_mtl":
                made = made.weighting  # a WeightedAggregator: its public weighting maps J to weights
            if scale != 1.0:
                made = ScaledWeighting(made, scale)
            if self.cr_mogm_alpha is not None:
                made = aggregation.CRMOGMWeighting(made, alpha=self.cr_mogm_alpha)
            self._weightings[key] = made
        return self._weightings[key]

    def solves_on_device(self, task_count: int) -> bool:
        """Whether the weights of ``task_count`` present tasks come from the device solvers."""
        if self.aggregator_name not in DEVICE_SOLVED or self.solver == "host" or not self._device_solvable():
            return False
        return self.solver == "device" or device_solvers.fits(task_count)

    def _device_solvable(self) -> bool:
        """CAGrad's face enumeration needs c > 0 (c = 0, the plain mean, stays with torchjd)."""
        return self.aggregator_name != "cagrad" or float(self.options.get("c", 0.5)) > 0

    def setup(self, task_names: list[str]) -> None:
        if self.solver == "device" and not device_solvers.fits(len(task_names)):
            raise ConfigError(
                f"optim.strategy.solver=device enumerates 2^T faces: at most {device_solvers.MAX_TASKS} tasks, "
                f"this run has {len(task_names)}; use solver=auto or host."
            )
        self.task_names = list(task_names)
        primary = self.primary_task
        if primary is not None and primary not in self.task_names:
            raise ConfigError(f"optim.strategy.primary_task must be one of {self.task_names}, got {primary!r}.")
        self.weighting(self.task_names)  # fail at start-up on a missing solver or a bad option

    def _names(self, count: int, names: Sequence[str] | None) -> list[str]:
        return list(names) if names is not None else [f"task{k}" for k in range(count)]

    def _call(self, names: list[str], stat: torch.Tensor) -> torch.Tensor:
        """The weighting (or aggregator) of ``names`` applied to ``stat``, its saved state first put
        back when a checkpoint was loaded.

        The weighting runs outside autocast, on ``stat`` in float32 at least: under bf16 mixed
        precision the products a weighting forms itself (Nash-MTL's J J^T, Aligned-MTL's and
        ConFIG's decompositions) would otherwise be taken in bf16, and Nash-MTL's hand-over to
        numpy fails on bf16 (found on an H200 by ``benchmarks/cuda_check.py``)."""
        key = "|".join(names)
        weighting = self.weighting(names)
        stat = stat.to(torch.promote_types(stat.dtype, torch.float32))
        host_solved = self.aggregator_name in FAIL_ON_NONFINITE and not self.solves_on_device(len(names))
        if host_solved and not bool(torch.isfinite(stat).all()):  # these read the host anyway: no extra round trip
            return torch.full((len(names),), math.nan, dtype=stat.dtype, device=stat.device)
        pending = self._pending.pop(key, None)
        if pending is not None:
            if isinstance(pending, NashState):
                pending.restore(weighting)
            else:
                restore_weighting_state(weighting, pending, stat)
        with torch.autocast(stat.device.type, enabled=False):
            return weighting(stat)

    def combination_weights(self, gramian, losses, jacobian=None, names=None):
        names = self._names(gramian.shape[0], names)
        if self.reads == "jacobian":
            assert jacobian is not None  # needs_jacobian: refused in gramian mode
            return self._call(names, jacobian)
        if self.aggregator_name == "pcd":
            return self._primary_first(names, gramian)
        return self._call(names, gramian)

    def _primary_first(self, names: list[str], gramian: torch.Tensor) -> torch.Tensor:
        """PCD reads the first row of G as the primary objective: the Gramian is permuted to put
        ``primary_task`` (default: the task set's first) first, and the weights are permuted back.
        In a batch without the primary task the first present task takes its place."""
        primary = self.primary_task or (self.task_names[0] if hasattr(self, "task_names") else names[0])
        first = names.index(primary) if primary in names else 0
        order = [first] + [k for k in range(len(names)) if k != first]
        weights = self._call([names[k] for k in order], gramian[order][:, order])
        return torch.empty_like(weights).index_copy_(0, torch.tensor(order, device=weights.device), weights)

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        if self.reads == "cross":
            return self._double_sampling_step(ctx, batch)
        return super().training_step(ctx, batch)

    def _double_sampling_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        """MoDo (Chen et al. 2023) and SDMGrad (Xiao et al. 2023): the weights come from
        A = J_1 J_2^T, J_1 and J_2 the task Jacobians of the two halves of the batch (independent
        samples, so that A estimates J J^T without the bias of one batch's Gramian), and the shared
        update is sum_k a_k g_k with the g_k of the whole batch. The papers draw a third,
        independent batch for the update; the whole batch is used here (no sample is wasted), a
        documented deviation. A task without labels in both halves gets weight 0 on the shared
        parameters in that iteration (its head still trains). Cost: 1F on the whole batch and 1F on
        each half, T backward passes per half and one for the update; batch norm sees every sample
        twice in its running statistics."""
        shared = ctx.model.shared_parameters()
        halves = []
        for half in batch_halves(ctx, batch, self.aggregator_name):
            found = self.stacked_losses(ctx, half)
            halves.append(({}, [], None) if found is None else found)
        common = [n for n in halves[0][1] if n in halves[1][1]]
        found = self.stacked_losses(ctx, batch)
        if found is None:
            return {}
        losses, names, stacked = found
        weights = stacked.new_zeros(len(names), dtype=torch.promote_types(stacked.dtype, torch.float32))
        if common:
            rows = []
            for _, half_names, half_stacked in halves:
                assert half_stacked is not None
                picked = torch.stack([half_stacked[half_names.index(n)] for n in common])
                rows.append(ctx.global_mean(task_jacobian(picked, shared, self.jacobian_method).detach()))
            dtype = torch.promote_types(rows[0].dtype, torch.float32)  # as the Gramian: float32 at least
            with torch.autocast(rows[0].device.type, enabled=False):
                cross = rows[0].to(dtype) @ rows[1].to(dtype).T
            chosen = self._call(common, cross)
            weights[[names.index(n) for n in common]] = chosen.to(weights)
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        ctx.backward(stacked @ weights.to(stacked.dtype), inputs=shared, retain_graph=True)
        ctx.backward(stacked.sum(), inputs=self.head_inputs(ctx.model, names))
        ctx.clip_gradients(optimizer)
        optimizer.step()
        return self.logged(losses, stacked, names, weights)

    def shared_update(self, jacobian, losses, names, gramian=None):
        if self.reads == "aggregator":
            return self._call(list(names), jacobian).to(jacobian.dtype), None
        return super().shared_update(jacobian, losses, names, gramian)

    def reads_jacobian(self) -> bool:
        return self.reads in ("jacobian", "aggregator")

    def get_extra_state(self) -> dict[str, Any]:
        """Per set of present tasks, the state of a stateful weighting (no entry for stateless ones)."""
        state: dict[str, Any] = {}
        for key, weighting in self._weightings.items():
            if hasattr(weighting, "prvs_alpha"):
                state[key] = NashState.of(weighting).as_tensor()
            elif isinstance(weighting, nn.Module) and any(b is not None for _, b in _all_buffers(weighting)):
                state[key] = weighting_state(weighting)
        return state | {k: v.as_tensor() if isinstance(v, NashState) else v for k, v in self._pending.items()}

    def set_extra_state(self, state: dict[str, Any] | torch.Tensor) -> None:
        if isinstance(state, torch.Tensor):  # checkpoints before per-task-set keys: Nash-MTL rows by task count
            state = self._legacy_nash_rows(state)
        self._pending = {}
        for key, value in state.items():
            self._weightings.pop(key, None)
            self._pending[key] = NashState.from_tensor(value) if isinstance(value, torch.Tensor) else value

    def _legacy_nash_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for row in rows:
            if int(row[0]) != len(self.task_names):
                raise ConfigError(
                    "this checkpoint holds Nash-MTL states per number of present tasks (an older format); "
                    "only the full task set's can be restored: resume from a newer checkpoint."
                )
            out["|".join(self.task_names)] = row
        return out


def _all_buffers(module: nn.Module):
    for sub in module.modules():
        yield from sub._buffers.items()


class NashState:
    """Nash-MTL's solver state -- step counter, Gramian normaliser, previous weights alpha -- as one
    float64 tensor ``[n, step, normaliser, alpha_1..alpha_n]`` (tensors only in the state dict)."""

    def __init__(self, row: torch.Tensor):
        self.row = row

    @classmethod
    def of(cls, solver) -> NashState:
        normaliser = float(np.asarray(solver.normalization_factor).reshape(-1)[0])
        alpha = np.asarray(solver.prvs_alpha, dtype=np.float64)
        return cls(torch.tensor([len(alpha), float(solver.step), normaliser, *alpha], dtype=torch.float64))

    @classmethod
    def from_tensor(cls, row: torch.Tensor) -> NashState:
        return cls(row)

    def as_tensor(self) -> torch.Tensor:
        return self.row

    def restore(self, solver) -> None:
        values = self.row.tolist()
        n_tasks = int(values[0])
        solver.step = values[1]
        solver.normalization_factor = np.array([values[2]])
        solver.prvs_alpha = np.array(values[3 : 3 + n_tasks], dtype=np.float64)
        if solver.step > 0:
            # torchjd builds its convex problem on the first step only (step == 0); a restored
            # solver is past it. Private torchjd method: exercised by tests/test_gradient_combination.py
            solver._init_optim_problem()
