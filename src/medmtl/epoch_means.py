"""Training values logged without Lightning's per-call bookkeeping at every step.

``self.log(..., on_step=True, on_epoch=True)`` costs Lightning a few hundred microseconds per value
per step (the value is moved, wrapped and accumulated), whether or not the logger writes that step:
with a dozen values that is milliseconds per iteration, time a GPU waits for. The module instead

- hands Lightning the step values only on the steps its logger writes (``trainer.log_every_n_steps``),
  under the names Lightning gave them before (``<name>_step``);
- keeps each value's epoch mean itself, weighted by the batch size as Lightning's own epoch
  reduction is (sum_i v_i b_i / sum_i b_i), as device tensors (no host read per step), and logs it
  once at the epoch's end as ``<name>_epoch``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class EpochMeans:
    """Batch-size-weighted sums of named values over one epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.sizes: dict[str, float] = {}

    def add(self, values: Mapping[str, torch.Tensor | float], batch_size: int) -> None:
        for name, value in values.items():
            weighted = torch.as_tensor(value).detach().to(torch.float64) * batch_size
            self.sums[name] = self.sums[name] + weighted if name in self.sums else weighted
            self.sizes[name] = self.sizes.get(name, 0.0) + batch_size

    def pop(self) -> dict[str, torch.Tensor]:
        """The epoch means (float32, as logged values are), and a fresh start for the next epoch."""
        means = {name: (total / self.sizes[name]).to(torch.float32) for name, total in self.sums.items()}
        self.sums, self.sizes = {}, {}
        return means


def logger_writes_this_step(trainer) -> bool:
    """Whether Lightning's logger connector writes the values of the current training step (every
    ``log_every_n_steps``-th step, and the last). Lightning keeps this decision in a private
    connector; without one (a changed Lightning), every step counts as written."""
    connector = getattr(trainer, "_logger_connector", None)
    return True if connector is None else bool(connector.should_update_logs)
