"""Host round trips per training step of every strategy, on CUDA (what keeps a GPU waiting).

    python benchmarks/bench_host_syncs.py [--width 0.25] [--size 128]   # needs a CUDA device

A synchronising CUDA operation (``.item()``, a Python branch on a device tensor, a copy to the
host, a linear-algebra error check) makes the host wait until the device has drained its queue:
the device then idles while the host prepares the next kernels. Each strategy's third training
step (after two warm-up steps) runs under ``torch.cuda.set_sync_debug_mode("warn")``; the warnings
are counted and attributed to the line of this repository (or of torchjd) that caused them.

Writes ``benchmarks/results/host_syncs.md``.
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

#: source folders a synchronisation is attributed to (the innermost frame from one of them)
OWN_CODE = ("/src/medmtl/", "/torchjd/", "/torch/optim/")


def synchronisations(step) -> collections.Counter:
    """The synchronising CUDA operations of one call of ``step``, by the line that caused them."""
    import torch

    where: collections.Counter = collections.Counter()
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return original(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if any(part in f.filename for part in OWN_CODE)]
        frame = frames[-1] if frames else None
        where[f"{frame.filename.split('/src/')[-1].split('site-packages/')[-1]}:{frame.lineno}" if frame else "elsewhere"] += 1

    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = original
    return where


def strategy_step(name: str, width: float, size: int, batch_size: int):
    import torch

    from bench_strategies import build, random_batch, repeating_context

    torch.manual_seed(0)
    model, strategy, tasks, optimizer_factory, input_keys = build(name, width, None)
    model.cuda()
    strategy.cuda()
    optimizers = strategy.configure_optimizers(model, optimizer_factory)
    batch = random_batch(size, batch_size, torch.device("cuda"))
    ctx = repeating_context(model, tasks, optimizers, batch, input_keys)
    return lambda: strategy.training_step(ctx, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--output", default=str(HERE / "results" / "host_syncs.md"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_host_syncs.py counts CUDA synchronisations: it needs a CUDA device.")
    from bench_strategies import discovered_strategies
    from medmtl.catalogue import needs_linear_readout

    # BayesAgg-MTL needs one linear head per task on a shared vector, which the U-Net has not
    names = args.only or [n for n in discovered_strategies() if not needs_linear_readout(n)]
    lines = [
        f"# Host round trips per training step ({torch.cuda.get_device_name()}, torch {torch.__version__})",
        "",
        f"U-Net VGG (width {args.width}), {args.size} px, batch {args.batch}, the four REFUGE tasks; the third step.",
        "",
        "| strategy | synchronisations | where (count) |",
        "|---|---:|---|",
    ]
    failed = []
    for name in names:
        try:  # one strategy's error is reported in its row; the others still run
            step = strategy_step(name, args.width, args.size, args.batch)
            for _ in range(2):
                step()
            where = synchronisations(step)
        except Exception as error:  # in the table and the exit status
            failed.append(name)
            lines.append(f"| {name} | raised | {type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]} |")
            print(lines[-1], flush=True)
            continue
        sources = ", ".join(f"{place} ({count})" for place, count in where.most_common(6))
        lines.append(f"| {name} | {sum(where.values())} | {sources} |")
        print(lines[-1], flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print(f"written: {output}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
