"""The own-loop API on R gloo ranks (tests/test_api.py): each rank runs a user's loop on its local
batches; the reference is one process on the union batch. Importable by spawned processes."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
from torch import nn

RANKS, LOCAL = 2, 2


class TwoHeads(nn.Module):
    """A user's network: a convolutional trunk and two linear heads (float64)."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 36, 16), nn.ReLU())
        self.left, self.right = nn.Linear(16, 10), nn.Linear(16, 10)

    def forward(self, x):
        z = self.trunk(x)
        return {"left": self.left(z), "right": self.right(z)}


def local_batch(iteration: int, rank: int, partial: bool, stream: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * iteration + 10 * rank + stream)
    batch = {
        "image": torch.rand(LOCAL, 1, 28, 28, generator=g, dtype=torch.float64),
        "left": torch.randint(0, 10, (LOCAL,), generator=g),
        "right": torch.randint(0, 10, (LOCAL,), generator=g),
    }
    # partial: the right digit labelled on rank 1 only, and there on one sample of two
    return batch | ({"present/right": torch.tensor([rank == 1, False])} if partial else {})


def stream(rank: int | None, partial: bool, kind: int = 0):
    for i in itertools.count():
        if rank is not None:
            yield local_batch(i, rank, partial, kind)
        else:
            parts = [local_batch(i, r, partial, kind) for r in range(RANKS)]
            yield {k: torch.stack([p[k] for p in parts], dim=1).flatten(0, 1) for k in parts[0]}


def run(name: str, rank: int | None, partial: bool, iterations: int = 3) -> list[torch.Tensor]:
    from medmtl.api import MultiTaskStep, TaskNetwork
    from medmtl.data.multimnist import multimnist_tasks

    torch.manual_seed(0 if rank in (None, 0) else 99)  # rank 1 starts elsewhere: the API must take rank 0's weights
    net = TwoHeads().double()
    network = TaskNetwork(net, shared=net.trunk, heads={"left": net.left, "right": net.right}, encode=net.trunk)
    step = MultiTaskStep(
        network,
        multimnist_tasks(),
        name,
        task_batches={"left": stream(rank, partial, 1), "right": stream(rank, partial, 2)},
        validation_batches=stream(rank, partial, 3),
    )
    torch.manual_seed(1 if rank in (None, 0) else 77)  # the ranks' draws are rank 0's from the first step
    for batch in itertools.islice(stream(rank, partial), iterations):
        step(batch)
        step.end_epoch()
    return [p.detach().clone() for p in net.parameters()]


def rank_main(rank: int, rendezvous: str, out: str, names: list[str]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=RANKS)
    try:
        result = {(name, partial): run(name, rank, partial) for name in names for partial in (False, True)}
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()
