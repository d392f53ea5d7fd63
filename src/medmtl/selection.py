"""Model selection of single-task learning: each task's network at its own lowest validation loss.

With ``optim=stl`` the model is :class:`~medmtl.models.base.SeparateNetworks`, T networks that
share nothing. Selecting one joint checkpoint on the summed validation loss sum_k L_k^val would
pick, for every task, the epoch that suits the sum; the single-task baselines of Pascal et al.
(2022) select each task's network on that task's own validation loss, epoch_k* = argmin_e
L_k^val(e). :class:`PerTaskSelection` keeps ``checkpoints/best_<task>.pt`` (that member's
weights) whenever L_k^val improves; after training, :meth:`PerTaskSelection.compose` loads every
member's best weights into the module and writes ``checkpoints/best_per_task.ckpt``, which the run
tests. ``optim.model_selection: joint`` keeps the summed-loss checkpoint instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from medmtl.checkpoints import read_checkpoint
from medmtl.errors import ConfigError
from medmtl.models.base import SeparateNetworks

SELECTIONS = ("per_task", "joint")


def save_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` into a temporary file renamed over ``path`` once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, partial)
    os.replace(partial, path)


class PerTaskSelection(L.Callback):
    """Tracks min_e L_k^val(e) per task and that epoch's weights of task k's network."""

    def __init__(self, dirpath: str | os.PathLike):
        self.dirpath = Path(dirpath)
        self.best: dict[str, float] = {}
        self.epochs: dict[str, int] = {}

    @staticmethod
    def check(model: torch.nn.Module) -> None:
        if not hasattr(model, "members"):
            raise ConfigError(
                "optim.model_selection=per_task needs one network per task (optim=stl); use optim.model_selection=joint."
            )

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.check(pl_module.model)

    def path_of(self, task: str) -> Path:
        return self.dirpath / f"best_{task}.pt"

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for task in pl_module.model.task_names:
            member = pl_module.model.member(task)
            value = trainer.callback_metrics.get(f"val/loss/{task}")
            if value is None or (task in self.best and float(value) >= self.best[task]):
                continue
            self.best[task], self.epochs[task] = float(value), trainer.current_epoch
            save_atomically({k: v.detach().cpu().clone() for k, v in member.state_dict().items()}, self.path_of(task))

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "epochs": dict(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.epochs = dict(state_dict["best"]), dict(state_dict["epochs"])

    def compose(self, trainer: L.Trainer, model: SeparateNetworks) -> str:
        """Every member of ``model`` (the trained module's) at its best epoch, saved with the rest of
        the module as ``best_per_task.ckpt``; "" when nothing was selected."""
        if not self.best:
            return ""
        for task in self.best:
            model.member(task).load_state_dict(read_checkpoint(self.path_of(task)))
        path = self.dirpath / "best_per_task.ckpt"
        trainer.save_checkpoint(path, weights_only=True)
        return str(path)
