"""What exact data parallelism costs, per strategy: bytes communicated per iteration and time.

    python benchmarks/bench_ddp.py [--width 0.125] [--size 64] [--batch 4] [--repeats 5] [--device cpu]

Two gloo processes (one thread each) train the U-Net VGG of Pascal et al. 2022 (reduced width) on
random REFUGE-shaped batches of ``batch`` samples each, every strategy through the same context as
training (``medmtl.distributed``). Per strategy:

- **payload**: bytes this rank hands to collectives per iteration (``Reducer.bytes_communicated``):
  vanilla's is the P float32 gradients plus T loss values; Jacobian methods add T x |W|
  (the task Jacobian of the shared parameters), MTL-IO one gradient of each task's path, ...
- **on paper**: a ring all-reduce sends 2 (R - 1) / R x payload per rank; the table gives it for 8
  GPUs on one node and for 4 nodes of 8 (R = 32), the payload being independent of R.
- **time**: median seconds per iteration on 2 ranks, on 1 process with the same per-rank batch
  (the ratio is the cost of communicating; 1 is ideal), and on 1 process with the union batch of
  2 x batch (the speed-up data parallelism buys; 2 is ideal, on 2 cores).

PyTorch's own ``DistributedDataParallel`` (bucketed all-reduce overlapped with the backward) is
timed for vanilla as a reference row: it is what the explicit reduction of ``.grad`` after the
backward gives up. Writes ``benchmarks/results/ddp.md`` (and prints it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

RANKS = 2
NATIVE = "vanilla (torch DDP)"


def strategies() -> list[str]:
    from medmtl.catalogue import needs_linear_readout, options

    # stl: T networks, no shared payload to compare; BayesAgg-MTL: needs linear heads, not the U-Net's
    return [name for name in options("optim") if name != "stl" and not needs_linear_readout(name)]


def timed_iterations(name: str, args, batch_size: int, native: bool = False) -> tuple[float, float]:
    """(median seconds per iteration, payload bytes per iteration) of strategy ``name`` here
    (one rank of the process group when there is one)."""
    import torch

    from bench_strategies import build, random_batch
    from medmtl.strategies.context import PlainContext
    from medmtl.tasks import VALIDATION

    torch.manual_seed(0)
    model, strategy, tasks, optimizer_factory, _ = build(name, args.width, None, dropout=0.0)
    model.to(args.device)
    strategy.to(args.device)
    optimizers = strategy.configure_optimizers(model, optimizer_factory)
    batch = random_batch(args.size, batch_size, args.device)
    endless = iter(lambda: batch, None)
    ctx = PlainContext(model, tasks, optimizers, task_batches={t.name: endless for t in tasks} | {VALIDATION: endless})
    if native:
        return native_ddp_iterations(model, tasks, optimizers[0], batch, args)
    for _ in range(2):
        strategy.training_step(ctx, batch)
    ctx.reducer.bytes_communicated = 0
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        strategy.training_step(ctx, batch)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), ctx.reducer.bytes_communicated / args.repeats


def native_ddp_iterations(model, tasks, optimizer, batch, args) -> tuple[float, float]:
    """vanilla through torch's DistributedDataParallel; payload: the P float32 gradients."""
    import torch

    from medmtl.tasks import compute_losses

    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    payload = sum(p.numel() * p.element_size() for p in model.parameters())

    def step():
        optimizer.zero_grad(set_to_none=True)
        outputs = wrapped(batch["image"])
        torch.stack(list(compute_losses(tasks, outputs, batch).values())).sum().backward()
        optimizer.step()

    for _ in range(2):
        step()
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), float(payload)


def rank_main(rank: int, rendezvous: str, out: str, args) -> None:
    import torch

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=RANKS)
    results = {name: timed_iterations(name, args, args.batch) for name in strategies()}
    results[NATIVE] = timed_iterations("vanilla", args, args.batch, native=True)
    torch.distributed.destroy_process_group()
    if rank == 0:
        torch.save(results, Path(out) / "ranks.pt")


def megabytes(value: float) -> str:
    return f"{value / 1e6:.2f}"


def table(distributed: dict, single: dict, union: dict, args) -> str:
    vanilla = distributed["vanilla"][1]
    lines = [
        "# Exact data parallelism: communication and time per strategy",
        "",
        f"`python benchmarks/bench_ddp.py --width {args.width} --size {args.size} --batch {args.batch} "
        f"--repeats {args.repeats} --device {args.device}`: {RANKS} gloo ranks, one thread each, batch "
        f"{args.batch} per rank; median of {args.repeats} iterations after 2 warm-up ones.",
        "",
        "Payload: bytes a rank hands to collectives per iteration. Ring all-reduce traffic per rank = "
        "2 (R-1)/R x payload (R = 8: one node of 8 GPUs; R = 32: 4 nodes of 8). Time ratio: 2 ranks / "
        f"1 process at the same per-rank batch (1 = free communication). Speed-up: 1 process on the union "
        f"batch of {RANKS * args.batch} / 2 ranks (2 = ideal).",
        "",
        "| strategy | payload (MB) | x vanilla | per rank at R=8 (MB) | per rank at R=32 (MB) | s/it 2 ranks "
        "| s/it 1 process | time ratio | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (seconds, payload) in distributed.items():
        alone, whole = single[name][0], union[name][0]
        lines.append(
            f"| {name} | {megabytes(payload)} | {payload / vanilla:.2f} | {megabytes(2 * 7 / 8 * payload)} | "
            f"{megabytes(2 * 31 / 32 * payload)} | {seconds:.3f} | {alone:.3f} | {seconds / alone:.2f} | {whole / seconds:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ddp.md")
    args = parser.parse_args()

    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as scratch:
        mp.start_processes(rank_main, args=(str(Path(scratch) / "rendezvous"), scratch, args), nprocs=RANKS, start_method="spawn")
        distributed = torch.load(Path(scratch) / "ranks.pt")
    torch.set_num_threads(1)
    single, union = {}, {}
    for name in list(distributed):
        strategy = "vanilla" if name == NATIVE else name
        single[name] = timed_iterations(strategy, args, args.batch)
        union[name] = timed_iterations(strategy, args, RANKS * args.batch)
    text = table(distributed, single, union, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
