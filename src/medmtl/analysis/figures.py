"""Figures of a sweep report.

- :func:`plot_roc`: ROC curves of the glaucoma score per method, pooled over folds or seeds
  (Pascal et al. 2022, Fig. 1): each run's ``predictions.npz`` (labels and the combined probability) is
  concatenated per method; the legend gives the pooled AUC (scikit-learn).
- :func:`plot_curves`: per method, the mean over runs of an epoch-level logged value (validation
  loss by default) with a +/- std band, read from each run's ``csv/metrics.csv``.
- :func:`plot_pareto`: for two task metrics, every method's mean (+/- std bars) in the plane of the
  two, the Pareto front (the methods no other beats on both) joined by a line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def save_figure(fig, output: str | Path, dpi: int = 150) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    output = Path(output)
    fig.savefig(output, dpi=dpi)
    plt.close(fig)
    return output


def pooled_predictions(runs, score: str = "p_combined") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """method -> (labels, scores) over every run that saved ``predictions.npz``."""
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for run in runs:
        path = run.folder / "predictions.npz"
        if path.is_file():
            with np.load(path) as data:
                if score in data.files:
                    pooled.setdefault(run.method, []).append((data["label"], data[score]))
    return {m: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])) for m, parts in pooled.items()}


def plot_roc(runs, output: str | Path, score: str = "p_combined") -> Path | None:
    pooled = pooled_predictions(runs, score)
    pooled = {m: v for m, v in pooled.items() if len(np.unique(v[0])) == 2}
    if not pooled:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for method, (labels, scores) in sorted(pooled.items()):
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{method} (AUC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Glaucoma ROC, pooled over runs")
    ax.legend(fontsize="small", loc="lower right")
    return save_figure(fig, output)


def epoch_curves(runs, column: str = "val/loss") -> dict[str, np.ndarray]:
    """method -> (runs x epochs) array of ``column`` (runs cut to the shortest)."""
    import pandas as pd

    curves: dict[str, list[np.ndarray]] = {}
    for run in runs:
        path = run.folder / "csv" / "metrics.csv"
        if not path.is_file():
            continue
        log = pd.read_csv(path)
        if column not in log.columns:
            continue
        per_epoch = log.dropna(subset=[column]).groupby("epoch")[column].last()
        curves.setdefault(run.method, []).append(per_epoch.to_numpy(dtype=np.float64))
    result = {}
    for method, arrays in curves.items():
        length = min(len(a) for a in arrays)
        if length:
            result[method] = np.stack([a[:length] for a in arrays])
    return result


def draw_mean_std(ax, curves: dict[str, np.ndarray]) -> None:
    """One line per method (mean over its runs per epoch) with a +/- one standard deviation band."""
    for method, values in sorted(curves.items()):
        epochs = np.arange(values.shape[1])
        mean, std = values.mean(axis=0), values.std(axis=0)
        ax.plot(epochs, mean, label=f"{method} (n={values.shape[0]})")
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)


def plot_curves(runs, output: str | Path, column: str = "val/loss") -> Path | None:
    curves = epoch_curves(runs, column)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_mean_std(ax, curves)
    ax.set_xlabel("epoch")
    ax.set_ylabel(column)
    ax.legend(fontsize="small")
    return save_figure(fig, output)


def plot_metric_curves(runs, output: str | Path, metrics: Sequence[str]) -> Path | None:
    """One panel per metric: its validation value after every epoch (``val/<metric>`` in the CSV
    log), mean +/- std over each method's runs (Hervella et al. 2024, Fig. 6). Only runs that
    validated (a validation split) have these curves."""
    panels = {metric: epoch_curves(runs, f"val/{metric}") for metric in metrics}
    panels = {metric: curves for metric, curves in panels.items() if curves}
    if not panels:
        return None
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, (metric, curves) in zip(axes.flat, panels.items()):
        draw_mean_std(ax, curves)
        ax.set_xlabel("epoch")
        ax.set_title(metric, fontsize="small")
    axes[0, 0].legend(fontsize="x-small")
    fig.tight_layout()
    return save_figure(fig, output)


def plot_pareto(
    means: Mapping[str, Mapping[str, float]],
    stds: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    output: str | Path,
    declared_lower: Collection[str] = (),
) -> Path | None:
    """The methods' trade-off between two task metrics (nothing drawn for another number of metrics
    or a method lacking one)."""
    from medmtl.analysis.stats import lower_is_better, pareto_front

    points = {m: v for m, v in means.items() if all(np.isfinite(v.get(k, np.nan)) for k in metrics)}
    if len(metrics) != 2 or len(points) < 2:
        return None
    x, y = metrics
    front = pareto_front(points, metrics, declared_lower)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for method, value in sorted(points.items()):
        on_front = method in front
        ax.errorbar(
            value[x],
            value[y],
            xerr=stds[method].get(x, 0.0),
            yerr=stds[method].get(y, 0.0),
            fmt="o" if on_front else "s",
            color="C3" if on_front else "C0",
            capsize=2,
        )
        ax.annotate(method, (value[x], value[y]), textcoords="offset points", xytext=(4, 4), fontsize="small")
    ordered = sorted(front, key=lambda m: points[m][x])
    ax.plot([points[m][x] for m in ordered], [points[m][y] for m in ordered], color="C3", lw=1, label="Pareto front")
    ax.set_xlabel(x + (" (lower is better)" if lower_is_better(x, declared_lower) else ""))
    ax.set_ylabel(y + (" (lower is better)" if lower_is_better(y, declared_lower) else ""))
    ax.legend(fontsize="small")
    return save_figure(fig, output)
