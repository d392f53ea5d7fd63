"""Time and memory per iteration against the number of tasks T, per family of strategies.

    python benchmarks/bench_many_tasks.py [--tasks 2 4 8 16 40] [--size 64] [--batch 8] [--repeats 3]

One network (``resnet_classifier``: a ResNet-18 encoder, a linear head per task) on T synthetic
binary tasks of random images; each (strategy, T) in its own process, so that its peak memory is
its own. What each family should show:

- loss-level methods (one backward of a weighted sum: ``vanilla``, ``rlw``, ``gls``, ``famo``,
  ``uncertainty``, ...) stay flat in T: only the T linear heads are added;
- Jacobian methods (``pcgrad``, ``jd_upgrad``, ``db_mtl``) grow linearly: T backward passes
  through the encoder, a T x |W| Jacobian;
- ``mgda_ub`` (gradients at the shared representation) stays close to flat;
- ``mtl_io`` and ``ga`` make T forward and backward passes: linear.

Writes ``benchmarks/results/many_tasks.md`` (seconds, peak MB, the ratio to vanilla at the same T,
and the growth exponent b of a fit time ~ T^b: 0 is flat, 1 is linear) and ``many_tasks.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

FAMILIES = {
    "loss level": ["vanilla", "rlw", "gls", "uncertainty", "famo", "stch"],
    "Jacobian": ["pcgrad", "jd_upgrad", "db_mtl"],
    "representation": ["mgda_ub"],
    "one pass per task": ["mtl_io", "ga"],
}


def synthetic_tasks(count: int):
    from medmtl import losses
    from medmtl.tasks import Task

    return [Task(f"t{k:02d}", "binary", losses.binary_cross_entropy) for k in range(count)]


def measure(args) -> dict:
    """In a child process: one strategy at one T."""
    import torch
    from hydra.utils import instantiate

    from bench_strategies import repeating_context, resident_mb
    from medmtl.catalogue import compose_train
    from medmtl.models import build_model
    from medmtl.models.resnet_classifier import ResNetClassifier

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tasks = synthetic_tasks(args.n_tasks)
    cfg = compose_train([f"optim={args.strategy}"])
    strategy = instantiate(cfg.optim.strategy)
    strategy.setup([t.name for t in tasks])
    model = build_model(lambda tasks: ResNetClassifier(tasks, backbone="resnet18", input_normalization="none"), tasks, False)
    optimizers = strategy.configure_optimizers(model, instantiate(cfg.optim.optimizer))
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(args.batch, 3, args.size, args.size, generator=g)}
    batch |= {t.name: (torch.rand(args.batch, generator=g) > 0.5).float() for t in tasks}
    ctx = repeating_context(model, tasks, optimizers, batch)
    start_mb = resident_mb()
    for _ in range(args.warmup):
        strategy.training_step(ctx, batch)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        strategy.training_step(ctx, batch)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start_mb}


def run_child(strategy: str, n_tasks: int, args) -> dict:
    command = [sys.executable, __file__, "--child", "--strategy", strategy, "--n-tasks", str(n_tasks)]
    command += ["--size", str(args.size), "--batch", str(args.batch), "--repeats", str(args.repeats)]
    command += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"{strategy} at T = {n_tasks} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def growth_exponent(counts, seconds) -> float:
    """b of the least-squares fit log(seconds) = a + b log(T)."""
    import numpy as np

    return float(np.polyfit(np.log(counts), np.log(seconds), 1)[0])


def plot(results: dict, counts, output: Path) -> None:
    from medmtl.analysis.figures import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for family_index, (family, names) in enumerate(FAMILIES.items()):
        for name in names:
            if name not in results:
                continue
            style = ["-", "--", ":", "-."][family_index]
            axes[0].plot(counts, [results[name][t]["seconds"] for t in counts], style, marker="o", label=f"{name} ({family})")
            axes[1].plot(counts, [results[name][t]["peak_mb"] for t in counts], style, marker="o", label=name)
    for ax, label in zip(axes, ("seconds per iteration", "peak memory growth (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()
        ax.set_xticks(counts, [str(t) for t in counts])
        ax.set_xlabel("number of tasks T")
        ax.set_ylabel(label)
    axes[0].legend(fontsize="x-small", ncol=2)
    save_figure(fig, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="vanilla")
    parser.add_argument("--n-tasks", type=int, default=2)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8, 16, 40])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="a subset of strategies")
    parser.add_argument("--output", default=str(HERE / "results" / "many_tasks.md"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    names = [n for names in FAMILIES.values() for n in names if not args.only or n in args.only or n == "vanilla"]
    results: dict[str, dict[int, dict]] = {}
    for name in names:
        results[name] = {}
        for count in args.tasks:
            results[name][count] = run_child(name, count, args)
            print(
                f"{name:12s} T={count:3d} {results[name][count]['seconds']:.4f} s  {results[name][count]['peak_mb']:.0f} MB",
                flush=True,
            )
    counts = list(args.tasks)
    family_of = {n: f for f, ns in FAMILIES.items() for n in ns}
    header = " | ".join(f"T={t}" for t in counts)
    lines = [
        "# Cost per iteration against the number of tasks",
        "",
        f"ResNet-18 encoder, a linear head per task, {args.size}x{args.size} random images, batch {args.batch}, "
        f"T synthetic binary tasks; CPU, {args.threads} threads, median of {args.repeats} iterations after "
        f"{args.warmup} warm-up. Seconds per iteration, in brackets the ratio to vanilla at the same T; b is the "
        "exponent of the fit seconds ~ T^b (0: flat, 1: linear in T). Peak memory is the growth of the process "
        "resident set size over the run.",
        "",
        f"| strategy | family | {header} | b |",
        "|---|---|" + "---:|" * (len(counts) + 1),
    ]
    for name in names:
        cells = [
            f"{results[name][t]['seconds']:.3f} ({results[name][t]['seconds'] / results['vanilla'][t]['seconds']:.1f}x)"
            for t in counts
        ]
        exponent = growth_exponent(counts, [results[name][t]["seconds"] for t in counts])
        lines.append(f"| {name} | {family_of[name]} | {' | '.join(cells)} | {exponent:.2f} |")
    lines += ["", f"| peak MB | family | {header} |", "|---|---|" + "---:|" * len(counts)]
    for name in names:
        lines.append(f"| {name} | {family_of[name]} | " + " | ".join(f"{results[name][t]['peak_mb']:.0f}" for t in counts) + " |")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    plot(results, counts, output.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
