"""Learning-rate sensitivity (Pascal et al. 2022, Figs. 2-3): best validation metric and lowest validation
loss per task as functions of the learning rate, one line per method with a +/- std band over
folds or seeds.

For every run, its ``csv/metrics.csv`` gives the per-epoch validation values: the best epoch of
each task metric (highest AUC or Dice, lowest fovea error) and the lowest value of each task's
validation loss are taken (the paper's "best metric score" and "minimum loss"), then averaged over
the runs of one method and learning rate (``lr`` in ``metrics.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medmtl.analysis.figures import plt, save_figure
from medmtl.analysis.stats import lower_is_better

TASK_METRICS = ("auc", "dice_od", "dice_oc", "fovea_error_grid")


def best_validation_values(folder: Path, metrics: Sequence[str] = TASK_METRICS) -> dict[str, float]:
    """``{metric: best over epochs}`` and ``{"loss/<task>": lowest over epochs}`` of one run."""
    path = Path(folder) / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    log = pd.read_csv(path)
    values = {}
    for metric in metrics:
        column = log.get(f"val/{metric}")
        if column is not None and column.notna().any():
            values[metric] = float(column.min() if lower_is_better(metric) else column.max())
    for column in (c for c in log.columns if c.startswith("val/loss/")):
        if log[column].notna().any():
            values[column.removeprefix("val/")] = float(log[column].min())
    return values


def sensitivity_frame(runs) -> pd.DataFrame:
    """One row per run: method (without the lr), lr, and its best validation values."""
    models = {r.attributes.get("model") for r in runs}
    rows = []
    for run in runs:
        lr = run.attributes.get("lr")
        if lr is None:
            continue
        method = str(run.attributes.get("strategy"))
        if len(models) > 1:
            method = f"{method} ({run.attributes.get('model')})"
        rows.append({"method": method, "lr": float(lr), **best_validation_values(run.folder)})
    return pd.DataFrame(rows)


def _plot_panels(frame: pd.DataFrame, columns: Sequence[str], output: Path, ylabel: str) -> Path:
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for method, group in frame.groupby("method"):
            stats = group.groupby("lr")[column].agg(["mean", "std", "count"]).sort_index()
            std = stats["std"].fillna(0.0).to_numpy()
            ax.plot(stats.index, stats["mean"], marker="o", label=method)
            ax.fill_between(stats.index, stats["mean"] - std, stats["mean"] + std, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(f"{ylabel} {column}", fontsize="small")
    axes[0][0].legend(fontsize="small")
    return save_figure(fig, output)


def plot_lr_sensitivity(runs, output_dir: str | Path) -> list[Path]:
    """``lr_metrics.png`` (Fig. 2) and ``lr_losses.png`` (Fig. 3) when the runs span two or more
    learning rates; nothing otherwise."""
    frame = sensitivity_frame(runs)
    if frame.empty or frame["lr"].nunique() < 2:
        return []
    output_dir = Path(output_dir)
    written = []
    metrics = [m for m in TASK_METRICS if m in frame]
    losses = sorted(c for c in frame.columns if c.startswith("loss/"))
    if metrics:
        written.append(_plot_panels(frame, metrics, output_dir / "lr_metrics.png", "best validation"))
    if losses:
        written.append(_plot_panels(frame, losses, output_dir / "lr_losses.png", "lowest validation"))
    return written
