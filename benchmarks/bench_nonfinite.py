"""What the non-finite checks (``optim.nonfinite``) cost per training iteration, as ratios to ``off``.

    python benchmarks/bench_nonfinite.py [--width 0.25] [--size 128] [--batch 4] [--repeats 15] [--device cpu]

Setting: the U-Net VGG of Pascal et al. 2022 (reduced width) on a random REFUGE-shaped batch, the
four REFUGE tasks, driven through :class:`~medmtl.strategies.context.PlainContext` with a
:class:`~medmtl.nonfinite.NonFiniteGuard` in each mode. ``vanilla`` steps one optimizer per
iteration, ``mtl_io`` four (one per task), so the cost of the per-step work shows. The modes are
interleaved round by round (off, stop, skip, off, ...) so that drifts of the machine touch all of
them alike; each cell is the median over ``repeats`` rounds.

- ``stop``: one device-side reduction per optimizer step and ONE host synchronisation per
  iteration (reading the iteration's flags);
- ``skip``: a synchronisation per optimizer step (to decide whether to step) and a copy of the
  floating-point buffers per iteration (to restore them after a dropped update).

On a CPU a synchronisation is free, so only the reductions show; on a GPU the synchronisations
stall the host's queue (measure there with ``--device cuda``). Writes
``benchmarks/results/nonfinite.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

MODES = ("off", "stop", "skip")
STRATEGIES = ("vanilla", "mtl_io")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "results" / "nonfinite.md"))
    args = parser.parse_args()

    import torch

    from medmtl.models.unet_vgg16 import UNetVGG16
    from medmtl.nonfinite import NonFiniteGuard
    from medmtl.strategies import EqualWeights, IndependentOptimizers
    from medmtl.strategies.context import PlainContext
    from medmtl.tasks import refuge_tasks

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    od = (torch.rand(args.batch, args.size, args.size, generator=g) > 0.7).float()
    batch = {
        k: v.to(device)
        for k, v in {
            "image": torch.rand(args.batch, 3, args.size, args.size, generator=g),
            "od": od,
            "oc": od * (torch.rand(args.batch, args.size, args.size, generator=g) > 0.5).float(),
            "fovea_heatmap": torch.rand(args.batch, args.size, args.size, generator=g),
            "glaucoma": (torch.rand(args.batch, generator=g) > 0.5).float(),
        }.items()
    }

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    runs = {}
    for name, strategy_class in (("vanilla", EqualWeights), ("mtl_io", IndependentOptimizers)):
        torch.manual_seed(0)
        tasks = refuge_tasks()
        model = UNetVGG16(tasks, width=args.width, dropout=0.0).to(device)
        strategy = strategy_class()
        strategy.setup([t.name for t in tasks])
        optimizers = strategy.configure_optimizers(model, lambda p: torch.optim.Adam(p, lr=1e-5))
        guards = {mode: NonFiniteGuard(mode) for mode in MODES}
        runs[name] = (model, strategy, optimizers, guards, tasks)

    def iteration(name: str, mode: str) -> float:
        model, strategy, optimizers, guards, tasks = runs[name]
        guard = guards[mode]
        sync()
        start = time.perf_counter()
        guard.begin_iteration(0, 0, model)
        strategy.training_step(PlainContext(model, tasks, optimizers, guard=guard), batch)
        guard.end_iteration([1e-5])
        sync()
        return time.perf_counter() - start

    times = {(n, m): [] for n in STRATEGIES for m in MODES}
    for name in STRATEGIES:
        for mode in MODES:
            iteration(name, mode)  # warm-up
        for _ in range(args.repeats):
            for mode in MODES:
                times[(name, mode)].append(iteration(name, mode))

    lines = [
        f"# Cost of the non-finite checks ({args.device}, U-Net width {args.width}, {args.size} px, batch {args.batch}, "
        f"median of {args.repeats} interleaved rounds, {args.threads} threads)",
        "",
        "| strategy | optimizer steps / iteration | off (ms) | stop (x off) | skip (x off) |",
        "|---|---|---|---|---|",
    ]
    for name in STRATEGIES:
        base = statistics.median(times[(name, "off")])
        ratios = [statistics.median(times[(name, m)]) / base for m in ("stop", "skip")]
        steps = 1 if name == "vanilla" else 4
        lines.append(f"| {name} | {steps} | {1000 * base:.1f} | {ratios[0]:.3f} | {ratios[1]:.3f} |")
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
