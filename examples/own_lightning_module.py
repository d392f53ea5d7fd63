"""A user's own LightningModule (manual optimization) whose update is a medmtl strategy.

python examples/own_lightning_module.py [strategy] [epochs]
"""

import sys
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medmtl.api import MultiTaskStep, Task, TaskNetwork

TASKS = [
    Task("kind", "multiclass", lambda out, y: F.cross_entropy(out, y, reduction="none"), num_outputs=3),
    Task("size", "regression", lambda out, y: (out.squeeze(1) - y) ** 2),
]


class TwoTaskModule(L.LightningModule):
    def __init__(self, strategy: str):
        super().__init__()
        self.automatic_optimization = False  # the strategy steps its own optimizers
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.kind, self.size = nn.Linear(32, 3), nn.Linear(32, 1)
        network = TaskNetwork(
            self, shared=self.trunk, heads={"kind": self.kind, "size": self.size}, outputs=TwoTaskModule.outputs
        )
        self.update = MultiTaskStep(network, TASKS, strategy, optimizer=partial(torch.optim.Adam, lr=1e-2))

    def outputs(self, x):
        z = self.trunk(x)
        return {"kind": self.kind(z), "size": self.size(z)}

    def configure_optimizers(self):
        return self.update.optimizers  # Lightning saves their state in its checkpoints

    def training_step(self, batch, batch_idx):
        x, kind, size = batch
        logged = self.update({"image": x, "kind": kind, "size": size})
        self.log_dict({k: v for k, v in logged.items() if k.startswith("loss/")}, prog_bar=True)

    def on_train_epoch_end(self):
        self.update.end_epoch()


def main(strategy: str = "pcgrad", epochs: int = 4) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    data = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long(), x[:, 2:5].sum(1))
    module = TwoTaskModule(strategy)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, DataLoader(data, batch_size=32, shuffle=True))
    losses = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(", ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    return losses


if __name__ == "__main__":
    main(*sys.argv[1:2], *map(int, sys.argv[2:3]))
