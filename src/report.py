"""Results tables from a sweep: ``python src/report.py logs/train/multiruns/<date> [--baseline stl]``.

Writes ``<sweep>/report/results.{md,tex,csv}`` (mean +/- std, best in bold, paired t-test marks,
Delta_MTL against the baseline) and names every run or fold that is missing or failed.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medmtl.analysis.report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a multirun folder (one job folder per run)")
    parser.add_argument("--output", default=None, help="where to write (default: <sweep>/report)")
    parser.add_argument("--metrics", nargs="*", default=None, help="columns, in order (default: every test metric)")
    parser.add_argument("--baseline", default="stl", help="the single-task method of Delta_MTL")
    args = parser.parse_args()
    try:
        output = write_report(args.sweep, args.output, args.metrics, args.baseline)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print((output / "results.md").read_text())
    print(f"written to {output}")


if __name__ == "__main__":
    main()
