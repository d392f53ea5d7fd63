"""``dwa`` (Liu et al. 2019; survey 3.1.3): dynamic weight average.

w_k(t) = T softmax_k(r_k(t-1) / Temp), r_k(t-1) = Lbar_k(t-1) / Lbar_k(t-2), on epoch-mean
training losses, Temp = 2; w = 1 while fewer than two epochs have ended. The running sums and the
two-epoch history are buffers, so a checkpoint restores them and a resumed run continues the same
weights.
"""

from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.weighted_sum import WeightedSum


class DynamicWeightAverage(WeightedSum):
    loss_sum: torch.Tensor
    loss_count: torch.Tensor
    history: torch.Tensor

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"optim.strategy.temperature must be a positive number, got {temperature!r}.")
        self.temperature = temperature

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        t = len(self.task_names)
        self.register_buffer("loss_sum", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(t, dtype=torch.float64))
        # history[0] = Lbar(t-2), history[1] = Lbar(t-1); NaN until two epochs have ended
        self.register_buffer("history", torch.full((2, t), float("nan"), dtype=torch.float64))

    def observe(self, ctx, batch, outputs, losses):
        self.record(losses)

    def record(self, losses) -> None:
        """Add one batch's task losses to this epoch's sums."""
        for name, loss in losses.items():
            i = self.task_names.index(name)
            self.loss_sum[i] += loss.detach().to(torch.float64)
            self.loss_count[i] += 1

    def current_weights(self) -> torch.Tensor:
        """Equal weights until two epochs of losses exist (a ``torch.where``, not a Python branch on
        the history: no host read of a device value at each step)."""
        ratio = self.history[1] / self.history[0]
        weights = len(self.task_names) * torch.softmax(ratio / self.temperature, dim=0)
        return torch.where(torch.isnan(self.history).any(), torch.ones_like(weights), weights)

    def weighted_total(self, losses):
        return self.combine(self.current_weights(), losses)

    def on_train_epoch_end(self, epoch: int) -> None:
        """Push this epoch's mean losses (a task unseen this epoch keeps its previous mean)."""
        mean = torch.where(self.loss_count > 0, self.loss_sum / self.loss_count.clamp_min(1), self.history[1])
        self.history.copy_(torch.stack([self.history[1], mean]))
        self.loss_sum.zero_()
        self.loss_count.zero_()

    def weights_to_log(self):
        return self.weights_by_task(self.current_weights())
