"""Keeping the epochs of a crashed attempt in ``csv/metrics.csv`` when the run resumes.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts. Before a resumed fit
the file is moved to ``metrics.before_resume.csv``; afterwards :func:`merge_after_resume` keeps the
earlier rows whose epoch precedes the first epoch the resumed attempt logged (the epochs it
trained again replace the crashed attempt's rows) and writes the union back to ``metrics.csv``.
A crash of the resumed attempt itself is handled the same way the next time.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

METRICS = "metrics.csv"
BEFORE_RESUME = "metrics.before_resume.csv"


def _merged(previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    if current.empty or "epoch" not in current:
        return previous
    first_new_epoch = current["epoch"].min()
    kept = previous[previous["epoch"] < first_new_epoch] if "epoch" in previous else previous.iloc[0:0]
    return pd.concat([kept, current], ignore_index=True)


def set_aside_before_resume(csv_dir: Path) -> None:
    """Move ``metrics.csv`` (merged into an earlier set-aside log, if any) out of the logger's way."""
    current, aside = csv_dir / METRICS, csv_dir / BEFORE_RESUME
    if not current.is_file():
        return
    if aside.is_file():
        _merged(pd.read_csv(aside), pd.read_csv(current)).to_csv(aside, index=False)
        current.unlink()
    else:
        current.rename(aside)


def merge_after_resume(csv_dir: Path) -> None:
    """``metrics.csv`` = earlier epochs from the set-aside log + the resumed attempt's rows."""
    current, aside = csv_dir / METRICS, csv_dir / BEFORE_RESUME
    if not aside.is_file():
        return
    previous = pd.read_csv(aside)
    merged = _merged(previous, pd.read_csv(current)) if current.is_file() else previous
    merged.to_csv(current, index=False)
    aside.unlink()
