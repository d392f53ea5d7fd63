"""A plain PyTorch loop that trains a two-task network with any medmtl strategy.

python examples/own_loop.py [strategy] [steps]      # e.g. pcgrad, jd_nash_mtl, famo, mtl_io, mgda_ub
"""

import sys
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.api import MultiTaskStep, Task, TaskNetwork


class Net(nn.Module):  # the user's own network: a trunk and two heads
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.kind = nn.Linear(32, 3)  # a 3-class classification
        self.size = nn.Linear(32, 1)  # a regression

    def forward(self, x):
        z = self.trunk(x)
        return {"kind": self.kind(z), "size": self.size(z)}


def main(strategy: str = "pcgrad", steps: int = 200) -> dict[str, float]:
    torch.manual_seed(0)
    net = Net()
    # encode= is optional: it lets the -UB strategies and graddrop work at the trunk's output
    network = TaskNetwork(net, shared=net.trunk, heads={"kind": net.kind, "size": net.size}, encode=net.trunk)
    tasks = [  # per-sample losses: the target is batch[task name]
        Task("kind", "multiclass", lambda out, y: F.cross_entropy(out, y, reduction="none"), num_outputs=3),
        Task("size", "regression", lambda out, y: (out.squeeze(1) - y) ** 2),
    ]
    step = MultiTaskStep(network, tasks, strategy, optimizer=partial(torch.optim.Adam, lr=1e-2))
    x = torch.randn(512, 8)
    data = {"image": x, "kind": (x[:, 0] > 0).long() + (x[:, 1] > 1).long(), "size": x[:, 2:5].sum(1)}
    for i in range(steps):
        rows = torch.randint(0, 512, (32,))
        logged = step({key: value[rows] for key, value in data.items()})
        if (i + 1) % 50 == 0:
            step.end_epoch()
            print(f"step {i + 1}: " + ", ".join(f"{k} {float(v):.3f}" for k, v in logged.items() if k.startswith("loss/")))
    return {k: float(v) for k, v in logged.items() if k.startswith("loss/")}


if __name__ == "__main__":
    main(*sys.argv[1:2], *map(int, sys.argv[2:3]))
