"""``rlw``: random loss weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting").

At every iteration, lambda ~ N(0, I_T) is drawn and normalised, w = softmax(lambda) (the paper's
default distribution), and one backward of sum_k w_k L_k follows. The T weights are drawn for every
task of the task set, so a task's weight does not depend on which other tasks the batch labels;
absent tasks are left out of the sum. The draw uses torch's global generator, whose state every
checkpoint holds, so a resumed run draws the same weights. Cost: that of ``vanilla`` (one forward,
one backward). The gradient update sum_k w_k g_k equals torchjd's ``Random`` aggregator applied to
the task Jacobian, at T times less cost.
"""

from __future__ import annotations

import torch

from medmtl.strategies.weighted_sum import WeightedSum


class RandomLossWeighting(WeightedSum):
    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        self._last: torch.Tensor | None = None
        self._next: torch.Tensor | None = None

    def draw(self, device: torch.device) -> torch.Tensor:
        """w = softmax(lambda), lambda ~ N(0, I_T), drawn on the CPU generator (device-independent)."""
        return torch.softmax(torch.randn(len(self.task_names), dtype=torch.float64), dim=0).to(device)

    def observe(self, ctx, batch, outputs, losses) -> None:
        self._next = ctx.agree(self.draw(next(iter(losses.values())).device))  # one draw for every rank

    def weighted_total(self, losses):
        drawn, self._next = self._next, None
        self._last = drawn if drawn is not None else self.draw(next(iter(losses.values())).device)
        return self.combine(self._last, losses)

    def weights_to_log(self):
        return {} if self._last is None else self.weights_by_task(self._last)
