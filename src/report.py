"""Results tables and figures from sweeps: ``python src/report.py <multirun folder> [more folders]``.

Writes ``<first sweep>/report/``: ``results.{md,tex,csv}`` (mean +/- std, best in bold, paired
t-test marks, Delta_MTL against the baseline with its 95% interval, the mean rank, every missing or
failed run named), ``roc.png``, ``pareto.png`` (two task metrics),
``val_loss.png``, ``overlay.png``, ``lr_metrics.png`` / ``lr_losses.png`` when the runs span
several learning rates, and the task-balance plots of runs trained with diagnostics.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medmtl.analysis.report import write_report
from medmtl.errors import ConfigError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", help="one or several multirun folders (one job folder per run)")
    parser.add_argument("--output", default=None, help="where to write (default: <first sweep>/report)")
    parser.add_argument("--metrics", nargs="*", default=None, help="columns, in order (default: every test metric)")
    parser.add_argument(
        "--baseline",
        nargs="+",
        default=["stl"],
        help="the single-task method(s) of Delta_MTL; several when they share the tasks out",
    )
    parser.add_argument(
        "--overlay",
        nargs="*",
        default=None,
        metavar="METHOD",
        help="methods of the segmentation overlay (default: the baseline and the best by AUC)",
    )
    args = parser.parse_args()
    try:
        output = write_report(args.sweeps, args.output, args.metrics, args.baseline, args.overlay)
    except (FileNotFoundError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print((output / "results.md").read_text())
    print(f"written to {output}")


if __name__ == "__main__":
    main()
