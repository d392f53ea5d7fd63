"""Task-balance plots from a run's ``diagnostics.csv`` (Hervella et al. 2024, Figs. 4-5).

- :func:`plot_per_layer`: for each task, the gradient magnitude and the update contribution per
  layer (averaged over the recorded iterations), layers in network order, log scale (Fig. 4);
- :func:`plot_per_step`: the same two quantities per recorded iteration, averaged over the layers
  whose name starts with ``layer_prefix`` (Fig. 5).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from medmtl.analysis.figures import save_figure

QUANTITIES = (("grad", "mean |gradient|"), ("contribution", "mean update contribution"))


def read_diagnostics(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    expected = {"iteration", "layer", "task", "grad", "contribution"}
    if not expected <= set(frame.columns):
        raise ValueError(f"{path} is not a diagnostics file: expected columns {sorted(expected)}.")
    return frame


def plot_per_layer(frame: pd.DataFrame, output: str | Path) -> Path:
    order = list(dict.fromkeys(frame["layer"]))
    mean = frame.groupby(["layer", "task"])[["grad", "contribution"]].mean().reset_index()
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.25 * len(order)), 7), sharex=True)
    for ax, (column, label) in zip(axes, QUANTITIES):
        for task, rows in mean.groupby("task"):
            rows = rows.set_index("layer").reindex(order)
            ax.plot(range(len(order)), rows[column].clip(lower=1e-20), marker=".", label=task)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
    axes[-1].set_xticks(range(len(order)))
    axes[-1].set_xticklabels(order, rotation=90, fontsize=6)
    return save_figure(fig, output, dpi=120)


def plot_per_step(frame: pd.DataFrame, output: str | Path, layer_prefix: str = "") -> Path:
    chosen = frame[frame["layer"].str.startswith(layer_prefix)]
    if chosen.empty:
        raise ValueError(f"No layer starts with {layer_prefix!r}.")
    mean = chosen.groupby(["iteration", "task"])[["grad", "contribution"]].mean().reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, (column, label) in zip(axes, QUANTITIES):
        for task, rows in mean.groupby("task"):
            ax.plot(rows["iteration"], rows[column].clip(lower=1e-20), label=task)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(f"{label}{f' ({layer_prefix}*)' if layer_prefix else ''}")
        ax.legend(fontsize="small")
    return save_figure(fig, output, dpi=120)
