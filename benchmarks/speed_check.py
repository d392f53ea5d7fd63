"""Which strategies survive the speed options, and do they train as the default path does?

    python benchmarks/speed_check.py [--device cpu] [--only vanilla pcgrad ...]

For every strategy (``src/medmtl/conf/optim``): two training steps of the tiny U-Net with plain SGD (MAO: its
own optimizer; lr 0.01:
Adam's g / sqrt(v) would turn rounding differences into whole steps wherever a gradient component
is near zero), eager and in the default memory format, against the same two steps with
``speed.channels_last`` and with ``speed.compile`` (:mod:`medmtl.speed`). In float64 the
difference must be at rounding level (< 1e-8: the same maths); the float32 column is what training
sees (float32 rounding, amplified by strategies that step several times per batch). Reported: the
largest parameter difference, NaN when the option's result is not finite, or the error's first
line when the step raises. On CUDA the bf16 check is ``benchmarks/cuda_check.py``'s.

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
#: the compared columns: (option, dtype name)
COLUMNS = (("channels_last", "float64"), ("compile", "float64"), ("compile", "float32"))
#: plain SGD instead of each strategy's Adam (see the module docstring)
SGD = ("~optim.optimizer", "+optim.optimizer={_target_:torch.optim.SGD,_partial_:true,lr:0.01}")


def plain_sgd(name: str) -> tuple[str, ...]:
    """The overrides that give strategy ``name`` plain SGD, unless it needs its own optimizer (MAO)."""
    from medmtl.catalogue import compose_train

    target = str(compose_train([f"optim={name}"]).optim.optimizer._target_)
    return SGD if target.startswith("torch.optim.") else ()


def compared(name: str, device, speed, dtype, reference) -> str:
    """The table cell of one strategy, option and dtype: the largest difference, or the error."""
    from cuda_check import steps

    try:
        params, _ = steps(name, device, dtype, False, speed=speed, extra=plain_sgd(name))
    except Exception as error:  # reported in the table: which strategies an option breaks, and how
        return f"fails: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    difference = max((p - q).abs().max().item() for p, q in zip(params, reference))
    if difference != difference:
        return "NaN"
    too_large = dtype.is_floating_point and dtype.itemsize == 8 and difference >= TOLERANCE
    return f"{difference:.1e}" + (" (too large)" if too_large else "")


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
    from medmtl.catalogue import needs_linear_readout

    # BayesAgg-MTL needs one linear head per task on a shared vector, which the U-Net has not
    names = args.only or [n for n in discovered_strategies() if not needs_linear_readout(n)]
    lines = [
        f"# Speed options against the default path ({args.device}, torch {torch.__version__})",
        "",
        "Max abs parameter difference after two SGD steps (tiny U-Net, 64 px, batch 2).",
        "",
        "| strategy | " + " | ".join(f"{option} ({dtype})" for option, dtype in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name in names:
        references = {
            dtype: steps(name, device, getattr(torch, dtype), False, extra=plain_sgd(name))[0] for dtype in ("float64", "float32")
        }
        cells = []
        for option, dtype in COLUMNS:
            speed = SpeedOptions(**{option: True})
            cells.append(compared(name, device, speed, getattr(torch, dtype), references[dtype]))
            torch._dynamo.reset()  # each run compiles afresh: no recompilation limit reached across them
        lines.append(f"| {name} | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    output = Path(args.output or HERE / "results" / f"speed_check_{args.device}.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print(f"written: {output}")


if __name__ == "__main__":
    main()
