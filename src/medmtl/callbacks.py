"""Callbacks: iteration timing (Pascal et al. 2022 reports seconds per training iteration)."""

from __future__ import annotations

import time

import lightning as L


class IterationTimer(L.Callback):
    """Wall-clock seconds per training iteration (one mini-batch: forward + backward + steps).

    The first ``warmup`` iterations are left out (allocator and cuDNN warm-up). With CUDA the
    device is synchronised so that asynchronous kernels are counted in their own iteration.
    """

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.durations: list[float] = []
        self._start = 0.0
        self._seen = 0

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            import torch

            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._seen += 1
        if self._seen > self.warmup:
            self.durations.append(time.perf_counter() - self._start)

    @property
    def mean_seconds(self) -> float | None:
        return sum(self.durations) / len(self.durations) if self.durations else None
