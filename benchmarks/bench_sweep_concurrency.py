"""Sweep throughput (jobs per hour) with k jobs of a sweep running at once on one device.

    python benchmarks/bench_sweep_concurrency.py                       # CPU: k = 1, 2
    python benchmarks/bench_sweep_concurrency.py --device cuda --k 1 2 4 --full

A small network at a small batch leaves a large GPU mostly idle; ``hydra/launcher=local
hydra.launcher.n_jobs=<k>`` runs k jobs of a sweep at once (joblib worker processes, each its own
CUDA context, sharing the device). Each k runs the same sweep of ``--jobs`` equal jobs (the
quickstart pipeline, U-Net VGG x vanilla on the synthetic REFUGE, seeds 1..jobs, ``--epochs``
epochs each, test included) through ``src/train.py`` as a user would; the synthetic data is written
once before the timed sweeps. Reported: wall time of the sweep, jobs per hour, and the ratio to k = 1.
On a CPU the jobs share the same cores, so k > 1 only helps where one job leaves cores idle.

Writes ``benchmarks/results/sweep_concurrency_<device>.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = HERE.parent / "src" / "train.py"
#: reduced sizes for a CPU (the quickstart's own are for its 20 epochs)
SMALL = ["model.width=0.125", "data.image_size=64", "data.num_workers=0"]


def sweep(k: int, jobs: int, epochs: int, device: str, full: bool, folder: Path, env: dict) -> float:
    """Wall seconds of one sweep of ``jobs`` runs with ``k`` at once."""
    overrides = [
        "-m",
        "experiment=quickstart",
        "hydra/launcher=local",
        f"hydra.launcher.n_jobs={k}",
        f"hydra.sweep.dir={folder}",
        f"trainer.max_epochs={epochs}",
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        "seed=" + ",".join(str(s) for s in range(1, jobs + 1)),
        *([] if full else SMALL),
    ]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(TRAIN), *overrides], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"the sweep with k={k} failed:\n{result.stderr[-3000:]}")
    finished = sorted(folder.glob("*/metrics.json"))
    if len(finished) != jobs:
        raise RuntimeError(f"the sweep with k={k} finished {len(finished)} of {jobs} jobs")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the quickstart's own sizes")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    output = Path(args.output or HERE / "results" / f"sweep_concurrency_{args.device}.md")
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "MEDMTL_DATA_DIR": f"{scratch}/data",
            "MEDMTL_LOG_DIR": f"{scratch}/logs",
            "MEDMTL_CACHE_DIR": f"{scratch}/cache",
            "HF_HUB_OFFLINE": "1",
        }
        sweep(1, 1, 1, args.device, args.full, Path(scratch) / "warmup", env)  # writes the synthetic data
        seconds = {k: sweep(k, args.jobs, args.epochs, args.device, args.full, Path(scratch) / f"k{k}", env) for k in args.k}
    base = seconds[args.k[0]]
    lines = [
        f"# Sweep throughput with k concurrent jobs ({args.device})",
        "",
        f"{args.jobs} jobs of the quickstart pipeline ({'its own sizes' if args.full else ' '.join(SMALL)}), "
        f"{args.epochs} epochs each, through `src/train.py -m hydra/launcher=local hydra.launcher.n_jobs=k`; "
        f"{os.cpu_count()} CPU cores.",
        "",
        "| k | sweep wall s | jobs / hour | x k=" + str(args.k[0]) + " |",
        "|---:|---:|---:|---:|",
    ]
    for k, wall in seconds.items():
        lines.append(f"| {k} | {wall:.1f} | {args.jobs / wall * 3600:.0f} | {base / wall:.2f} |")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
