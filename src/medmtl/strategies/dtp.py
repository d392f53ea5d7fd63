"""``dtp``: dynamic task prioritization (Guo et al. 2018; survey 3.1.4).

w_k = -(1 - kappa_k)^gamma_k log(kappa_k), where kappa_k in (0, 1) is task k's key performance
indicator (``medmtl.strategies.kpi``: accuracy, Dice, soft Dice), smoothed by an exponential moving
average kappa <- ema * kappa + (1 - ema) * KPI(batch) over training batches (the survey's
"validation-style metric"; computing it on training batches avoids an extra pass). Harder tasks
(low kappa) get larger weights. The first observation initialises kappa; kappa is clipped to
[``clip``, 1 - ``clip``] so that the weight stays finite. ``gamma`` is one value or one per task.
The smoothed KPIs are buffers (checkpointed).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext
from medmtl.strategies.kpi import kpi_from_statistics, kpi_statistics
from medmtl.strategies.weighted_sum import WeightedSum


class DynamicTaskPrioritization(WeightedSum):
    gammas: torch.Tensor
    kappa: torch.Tensor

    def __init__(self, gamma: float | Mapping[str, float] = 1.0, ema: float = 0.9, clip: float = 1e-3):
        super().__init__()
        self.gamma, self.ema, self.clip = gamma, ema, clip

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        if isinstance(self.gamma, Mapping):
            missing = [t for t in task_names if t not in self.gamma]
            if missing:
                raise ConfigError(f"optim.strategy.gamma has no value for the tasks {missing}.")
            gammas = [float(self.gamma[t]) for t in task_names]
        else:
            gammas = [float(self.gamma)] * len(task_names)
        self.register_buffer("gammas", torch.tensor(gammas, dtype=torch.float64))
        self.register_buffer("kappa", torch.full((len(task_names),), float("nan"), dtype=torch.float64))

    def observe(self, ctx: StepContext, batch: Batch, outputs, losses) -> None:
        """kappa_k <- ema kappa_k + (1 - ema) KPI_k(batch); under DDP the KPI of the union of the
        ranks' batches (their statistics summed)."""
        statistics = torch.zeros(len(self.task_names), 2, dtype=torch.float64, device=self.kappa.device)
        for task in ctx.tasks:
            if task.name in outputs:
                found = kpi_statistics(task, outputs[task.name], batch)
                if found is not None:
                    statistics[self.task_names.index(task.name)] = found.to(statistics)
        statistics = ctx.global_sum(statistics)
        by_name = {task.name: task for task in ctx.tasks}
        for i, name in enumerate(self.task_names):
            if statistics[i, 1] == 0:
                continue
            value = kpi_from_statistics(by_name[name], statistics[i])
            previous = self.kappa[i]
            self.kappa[i] = value if torch.isnan(previous) else self.ema * previous + (1 - self.ema) * value

    def task_weights(self) -> torch.Tensor:
        kappa = self.kappa.nan_to_num(0.5).clamp(self.clip, 1 - self.clip)
        return -((1 - kappa) ** self.gammas) * torch.log(kappa)

    def weighted_total(self, losses):
        return self.combine(self.task_weights(), losses)

    def weights_to_log(self):
        return self.weights_by_task(self.task_weights())
