"""What only a GPU shows: every strategy's step on CUDA equals its step on the CPU, and bf16
autocast steps stay finite.

    python benchmarks/cuda_check.py [--output benchmarks/results/cuda_check.md]

For each strategy: the same tiny U-Net (float64), the same batch, two training steps on the CPU and
on CUDA; the largest parameter difference must be at round-off level. Then two steps under
``torch.autocast("cuda", dtype=torch.bfloat16)`` in float32: parameters must stay finite and move.
Strategies that draw random numbers (PCGrad's order, GA's balanced sampler) are seeded identically.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))


#: strategies whose random draws come from the generator of the Jacobian's device (torchjd's Random
#: and GradDrop): on CUDA they differ from the CPU's by design (4e-4 on an H200), not by error
DRAWS_ON_DEVICE = ("jd_random", "jd_graddrop")


def steps(name, device, dtype, autocast, width=1 / 16, size=64, speed=None, extra=()):
    """Two training steps of strategy ``name`` from a fixed start; ``speed``: a
    :class:`medmtl.speed.SpeedOptions` applied to the network and its input; ``extra``: config
    overrides."""
    import torch

    from bench_strategies import build, random_batch, repeating_context
    from medmtl.speed import SpeedOptions

    speed = speed or SpeedOptions()
    torch.manual_seed(0)
    model, strategy, tasks, optimizer_factory, _ = build(name, width, None, dropout=0.0, extra=list(extra))
    model.to(device=device, dtype=dtype)
    speed.prepare(model)
    strategy.to(device=device, dtype=dtype)
    optimizers = strategy.configure_optimizers(model, optimizer_factory)
    batch = {k: speed.input(v.to(dtype)) for k, v in random_batch(size, 2, device).items()}
    ctx = repeating_context(model, tasks, optimizers, batch)
    initial = copy.deepcopy([p.detach() for p in model.parameters()])
    torch.manual_seed(1)
    for _ in range(2):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            strategy.training_step(ctx, batch)
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(model.parameters(), initial))
    return [p.detach().cpu() for p in model.parameters()], moved


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=str(HERE / "results" / "cuda_check.md"))
    parser.add_argument("--only", nargs="*", default=None, help="a subset of strategies")
    args = parser.parse_args()
    cuda = torch.device("cuda")
    lines = [
        f"# CUDA checks ({torch.cuda.get_device_name()}, torch {torch.__version__})",
        "",
        "| strategy | max abs diff CUDA vs CPU (float64, 2 steps) | bf16 autocast: finite | bf16: max update |",
        "|---|---:|---|---:|",
    ]
    failures = []
    from medmtl.catalogue import needs_linear_readout, strategy_names

    # every src/medmtl/conf/optim entry but BayesAgg-MTL's (linear heads, not the U-Net's: its CPU
    # tests cover it)
    for name in args.only or [n for n in strategy_names() if not needs_linear_readout(n)]:
        try:  # one strategy's error is a failure of that row, reported; the others still run
            # the device's own generator draws other numbers than the CPU's from the same seed: a
            # strategy that draws on the device is compared with itself, run twice on CUDA
            reference = torch.device("cuda" if name in DRAWS_ON_DEVICE else "cpu")
            cpu_params, _ = steps(name, reference, torch.float64, autocast=False)
            gpu_params, _ = steps(name, cuda, torch.float64, autocast=False)
            diff = max((a - b).abs().max().item() for a, b in zip(cpu_params, gpu_params))
            bf16_params, moved = steps(name, cuda, torch.float32, autocast=True)
        except Exception as error:  # recorded in the table and the exit status
            failures.append(name)
            first_line = (str(error).splitlines() or [""])[0][:160]
            lines.append(f"| {name} | raised {type(error).__name__}: {first_line} | | |")
            print(lines[-1], flush=True)
            continue
        finite = all(torch.isfinite(p).all().item() for p in bf16_params)
        if diff > 1e-8 or not finite or moved == 0:
            failures.append(name)
        against = " (CUDA twice: draws on the device)" if name in DRAWS_ON_DEVICE else ""
        lines.append(f"| {name} | {diff:.2e}{against} | {'yes' if finite else 'NO'} | {moved:.2e} |")
        print(lines[-1], flush=True)
    lines += ["", f"failures: {failures or 'none'}"]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
