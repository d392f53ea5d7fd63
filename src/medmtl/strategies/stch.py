"""``stch``: smooth Tchebycheff scalarisation (Lin et al. 2024, ICML), loss level.

The Tchebycheff scalarisation max_k lambda_k (f_k - z_k) optimises the worst-off task relative to
a reference point z; its smooth version is

    g_mu(theta) = mu log sum_k exp( lambda_k (f_k(theta) - z_k) / mu ),

whose gradient is sum_k softmax_k(lambda (f - z) / mu) lambda_k grad f_k: the worst task weighs
most, smoothly. As in the paper's multi-task experiments the objectives are the log losses
normalised by a nadir estimate z_k (the task's mean training loss over the warm-up's last epoch):
f_k - z_k = log(L_k / z_k), so the scalarisation is invariant to each loss's scale.

- During ``warmup_epochs`` epochs the network trains on sum_k log L_k (the scale-invariant sum)
  while the last warm-up epoch's mean losses are recorded; afterwards it trains on
  T g_mu (the factor T keeps the step of the T-term warm-up sum: the weights of grad log L_k sum
  to T in both phases). A task unseen during that epoch keeps z_k = 1.
- ``mu`` is the smoothing (mu -> 0 is the hard Tchebycheff max, large mu the equal-weight sum);
  ``preference`` lambda (default all ones). The paper fixes neither the warm-up length nor mu for
  every benchmark: both are options.

Tasks absent from a batch are left out of the log-sum-exp. Nadir sums and the epoch count are
buffers (checkpointed). Cost: that of ``vanilla``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.weighted_sum import WeightedSum


class SmoothTchebycheff(WeightedSum):
    nadir_sum: torch.Tensor
    nadir_count: torch.Tensor
    nadir: torch.Tensor
    epochs_done: torch.Tensor

    def __init__(self, mu: float = 1.0, warmup_epochs: int = 1, preference: Sequence[float] | None = None, eps: float = 1e-8):
        super().__init__()
        if mu <= 0:
            raise ConfigError(f"optim.strategy.mu must be positive, got {mu}.")
        if warmup_epochs < 1:
            raise ConfigError(f"optim.strategy.warmup_epochs must be >= 1 (the nadir needs an epoch), got {warmup_epochs}.")
        self.mu = mu
        self.warmup_epochs = warmup_epochs
        self.preference = None if preference is None else [float(p) for p in preference]
        self.eps = eps
        self._last: dict[str, torch.Tensor] = {}

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        t = len(self.task_names)
        if self.preference is not None and len(self.preference) != t:
            raise ConfigError(
                f"optim.strategy.preference needs {t} values (one per task {self.task_names}), got {self.preference}."
            )
        self.register_buffer("preference_vector", torch.tensor(self.preference or [1.0] * t, dtype=torch.float64))
        self.register_buffer("nadir_sum", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("nadir_count", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("nadir", torch.ones(t, dtype=torch.float64))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.int64))

    @property
    def warming_up(self) -> bool:
        return int(self.epochs_done) < self.warmup_epochs

    def weighted_total(self, losses):
        index = [self.task_names.index(k) for k in losses]
        stacked = torch.stack(list(losses.values()))
        if self.warming_up:
            if int(self.epochs_done) == self.warmup_epochs - 1:
                self.nadir_sum[index] += stacked.detach().to(torch.float64)
                self.nadir_count[index] += 1
            self._last = {f"weight/{k}": torch.ones((), device=stacked.device) for k in losses}
            return torch.log(stacked + self.eps).sum()
        normalised = torch.log((stacked + self.eps) / self.nadir[index].to(stacked))
        scaled = self.preference_vector[index].to(stacked) * normalised / self.mu
        total = len(losses) * self.mu * torch.logsumexp(scaled, dim=0)
        weights = len(losses) * torch.softmax(scaled.detach(), dim=0) * self.preference_vector[index].to(stacked)
        self._last = {f"weight/{k}": w.float() for k, w in zip(losses, weights)}
        return total

    def on_train_epoch_end(self, epoch: int) -> None:
        self.epochs_done += 1
        if int(self.epochs_done) == self.warmup_epochs:
            seen = self.nadir_count > 0
            self.nadir.copy_(torch.where(seen, self.nadir_sum / self.nadir_count.clamp_min(1), self.nadir))

    def weights_to_log(self):
        return self._last
