"""A callback that kills its own process with SIGKILL: a crash nothing can intercept (resume tests)."""

import os
import signal

import lightning as L


class KillDuringTraining(L.Callback):
    """SIGKILL at the start of training batch ``batch`` of epoch ``epoch`` (no cleanup, no hooks)."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonWeights(L.Callback):
    """Sets one weight of the network to NaN at the start of epoch ``epoch`` (a divergence that
    happens after some checkpoints were written)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            import torch

            with torch.no_grad():
                next(pl_module.model.parameters()).view(-1)[0] = float("nan")
