"""The plain loop of own_loop.py on several processes: each rank trains on its shard of every
batch, and the strategy's step is the one a single process would take on the whole batch.

    torchrun --nproc_per_node 2 examples/own_loop_ddp.py [strategy] [steps]

No DistributedDataParallel wrapper: medmtl reduces what each strategy reads (docs/api.md).
"""

import sys
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medmtl.api import MultiTaskStep, Task, TaskNetwork


def main(strategy: str = "pcgrad", steps: int = 100) -> None:
    dist.init_process_group("gloo")  # torchrun's environment: RANK, WORLD_SIZE, MASTER_ADDR, ...
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)  # the ranks may start anywhere: MultiTaskStep copies rank 0's weights
    trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    kind, size = nn.Linear(32, 3), nn.Linear(32, 1)
    net = nn.ModuleDict({"trunk": trunk, "kind": kind, "size": size})
    network = TaskNetwork(net, shared=trunk, heads={"kind": kind, "size": size}, encode=trunk)
    tasks = [
        Task("kind", "multiclass", lambda out, y: F.cross_entropy(out, y, reduction="none"), num_outputs=3),
        Task("size", "regression", lambda out, y: (out.squeeze(1) - y) ** 2),
    ]
    step = MultiTaskStep(network, tasks, strategy, optimizer=partial(torch.optim.Adam, lr=1e-2))
    data = torch.Generator().manual_seed(0)  # every rank draws the same global batch, keeps its shard
    for _ in range(steps):
        x = torch.randn(32, 8, generator=data)
        batch = {"image": x, "kind": (x[:, 0] > 0).long() + (x[:, 1] > 1).long(), "size": x[:, 2:5].sum(1)}
        logged = step({key: value[rank::world] for key, value in batch.items()})
    checksum = sum(float(p.detach().double().sum()) for p in net.parameters())
    losses = ", ".join(f"{k} {float(v):.3f}" for k, v in logged.items() if k.startswith("loss/"))
    # one write per rank (print writes the line and its newline separately: two ranks could interleave)
    sys.stdout.write(f"rank {rank}: {losses}; parameter checksum {checksum:.12f}\n")
    sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:2], *map(int, sys.argv[2:3]))
