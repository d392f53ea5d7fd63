"""``ga``: gradient accumulation over tasks (Schafer et al. 2024, Algorithm 1; docs/methods.md).

    zero grads
    for each optimisation step:
        for each task k chosen by the sampler:
            batch_k <- next(infinite loader of task k)     # each loader restarts on its own
            loss_k = forward(task k's graph on batch_k); loss_k.backward()   # activations freed now
        optimizer.step(); zero grads

Only one task's activations are alive at a time, so peak memory does not grow with the number of
tasks; tasks may come from different datasets with different inputs (``ctx.task_batch``). The
mini-batch Lightning hands over is not used: one iteration is one optimisation step.

Samplers: ``cyclic`` (every task once per step, in order: Schafer et al. 2024's default) and ``balanced``
(``steps`` tasks drawn uniformly at random with replacement; ``steps`` defaults to T). A
dataset's size never changes its task's weight. A batch in which the chosen task has no labelled
sample contributes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import Batch, StepContext, Strategy

SAMPLERS = ("cyclic", "balanced")


class GradientAccumulation(Strategy):
    uses_task_batches = True

    def __init__(self, sampler: str = "cyclic", steps: int | None = None):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ConfigError(f"optim.strategy.sampler must be one of {SAMPLERS}, got {sampler!r}.")
        self.sampler, self.steps = sampler, steps

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)

    def chosen_tasks(self, agree: Callable[[torch.Tensor], torch.Tensor] = lambda draw: draw) -> list[str]:
        """The tasks of one step; ``agree`` makes every rank use rank 0's draw (``ctx.agree``)."""
        if self.sampler == "cyclic":
            return list(self.task_names)
        count = self.steps or len(self.task_names)
        picks = agree(torch.randint(len(self.task_names), (count,))).tolist()  # global RNG: seeded runs repeat
        return [self.task_names[i] for i in picks]

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        logged: dict[str, list[torch.Tensor]] = {}
        for name in self.chosen_tasks(ctx.agree):
            task_batch = ctx.task_batch(name)
            losses = ctx.losses(ctx.forward(task_batch, [name]), task_batch, [name])
            if name not in losses:
                continue
            ctx.backward(losses[name])
            logged.setdefault(name, []).append(losses[name].detach())
        if not logged:
            return {}
        ctx.clip_gradients(optimizer)
        optimizer.step()
        return {f"loss/{k}": torch.stack(v).mean() for k, v in logged.items()}
