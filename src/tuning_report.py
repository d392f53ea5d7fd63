"""How each method was tuned and what was chosen: ``python src/tuning_report.py <tuning sweep> [more]``.

Each folder is a sweep of ``experiment=tune`` (``logs/tune/<method>/<date>``). Writes
``tuning.md`` (budget, completed and failed trials, best validation objective, chosen values,
search spaces, and the overrides that run each method's table at its tuned setting) and prints it.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medmtl.analysis.tuning import write_tuning_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", help="tuning sweep folders, one per method")
    parser.add_argument("--output", default=None, help="where to write tuning.md (default: beside the first sweep)")
    args = parser.parse_args()
    output = Path(args.output) if args.output else Path(args.sweeps[0]).parent.parent / "tuning.md"
    try:
        path = write_tuning_report(args.sweeps, output)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(path.read_text())
    print(f"written to {path}")


if __name__ == "__main__":
    main()
