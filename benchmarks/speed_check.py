"""Which strategies survive the speed options, and do they train as the default path does?

    python benchmarks/speed_check.py [--device cpu] [--only vanilla pcgrad ...]

For every strategy (``conf/optim``): two training steps of the tiny U-Net in float64 with the
configured optimizer, eager and default memory format, against the same two steps with
``speed.channels_last`` and with ``speed.compile`` (:mod:`medmtl.speed`); the largest parameter
difference must be at rounding level (< 1e-8). A strategy whose step raises with an option is
listed with the error's first line (it does not survive that option). On CUDA the bf16 check is
``benchmarks/cuda_check.py``'s.

Writes ``benchmarks/results/speed_check_<device>.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

TOLERANCE = 1e-8


def compared(name: str, device, speed, reference) -> str:
    """The table cell of one strategy and option: the largest difference, or the error."""
    import torch

    from cuda_check import steps

    try:
        params, _ = steps(name, device, torch.float64, False, speed=speed)
    except Exception as error:  # reported in the table: which strategies an option breaks, and how
        return f"fails: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    difference = max((p - q).abs().max().item() for p, q in zip(params, reference))
    return f"{difference:.1e}" + ("" if difference < TOLERANCE else " (too large)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    import torch

    from bench_strategies import discovered_strategies
    from cuda_check import steps
    from medmtl.speed import SpeedOptions

    device = torch.device(args.device)
    names = args.only or list(discovered_strategies())
    lines = [
        f"# Speed options against the default path ({args.device}, torch {torch.__version__})",
        "",
        "Max abs parameter difference after two float64 steps (tiny U-Net, 64 px, batch 2).",
        "",
        "| strategy | channels_last | compile |",
        "|---|---|---|",
    ]
    for name in names:
        reference, _ = steps(name, device, torch.float64, False)
        cells = [compared(name, device, SpeedOptions(**{option: True}), reference) for option in ("channels_last", "compile")]
        torch._dynamo.reset()  # each strategy compiles afresh: no recompilation limit reached across them
        lines.append(f"| {name} | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    output = Path(args.output or HERE / "results" / f"speed_check_{args.device}.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print(f"written: {output}")


if __name__ == "__main__":
    main()
