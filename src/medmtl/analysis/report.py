"""Turn a sweep folder into results tables (Markdown, LaTeX, CSV).

A sweep folder holds one job folder per run (Hydra's multirun layout); each job has
``.hydra/overrides.yaml`` and, when it finished, ``metrics.json``. Several sweep folders can be
reported together (e.g. Pascal et al. 2022 Table 2 and its Res34-UNet reference). Runs are grouped by method:
the strategy, plus the model, the number of tasks and the learning rate when the runs differ in
them (``mtl_io (UNetVGG16, lr=0.001)``, ``ga (1 task)`` vs ``ga (12 tasks)``); they are paired across
methods by fold (CV) or by seed. Each cell is mean +/- std over the runs; the best mean per column
is bold; a method whose
value the best is significantly better than (paired t-test) is marked * (p < 0.05) or ** (p < 0.01);
Delta_MTL is computed against the ``baseline`` method (``stl``) over the task metrics; several
baseline methods may share the tasks out (Roy 2025: a grading classifier and a lesion segmenter),
each task's baseline value then comes from the one that reports it.

Nothing is averaged silently: jobs without ``metrics.json`` and folds or seeds that a method lacks
compared with the others are listed in the report; a job that failed is named with the sentence
its ``failure.json`` recorded (a configuration or data error, non-finite values, a crash).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmtl.analysis.figures import plot_curves, plot_metric_curves, plot_pareto, plot_roc
from medmtl.analysis.lr_sensitivity import plot_lr_sensitivity
from medmtl.analysis.overlays import overlay_from_runs
from medmtl.analysis.stats import (
    delta_mtl,
    lower_is_better,
    mean_ranks,
    mean_std,
    paired_t_test,
    significance_mark,
    t_interval,
)
from medmtl.analysis.task_balance import plot_per_layer, plot_per_step, read_diagnostics
from medmtl.errors import ConfigError

RESOURCE_COLUMNS = {"num_parameters": "parameters", "flops_per_sample": "GFLOPs", "seconds_per_iteration": "seconds/iteration"}


@dataclass
class Run:
    folder: Path
    method: str
    pair_key: str
    metrics: dict[str, float] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)  # strategy; model and lr join the label when they vary


@dataclass
class Collection:
    runs: list[Run]
    failed: list[Path]


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p.parent.parent for p in Path(sweep).rglob(".hydra/overrides.yaml"))


def read_record(path: Path) -> dict | None:
    """A run's JSON record, or None when it is truncated or not JSON (the report then lists the
    run as unreadable instead of stopping on it)."""
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def load_run(folder: Path) -> Run | None:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    record = read_record(path)
    if record is None:
        return None
    metrics = {k: float(v) for k, v in record.get("test", {}).items() if v is not None and not k.startswith("loss")}
    for key, name in RESOURCE_COLUMNS.items():
        if record.get(key) is not None:
            metrics[name] = float(record[key])
    fold = record.get("fold")
    pair_key = f"fold {fold}" if record.get("protocol", "cv") == "cv" and fold is not None else f"seed {record.get('seed')}"
    attributes = {
        "data": record.get("data"),
        "strategy": record.get("strategy"),
        "model": record.get("model"),
        "lr": record.get("lr"),
        "tasks": record.get("n_tasks"),
        "task_metrics": record.get("task_metrics"),
        "lower_is_better": record.get("lower_is_better"),
        "arms": record.get("arms") or {},
    }
    return Run(folder, str(record.get("strategy")), pair_key, metrics, attributes)


def _attribute_label(name: str, value) -> str:
    if name == "model":
        return str(value)
    if name == "tasks":
        return f"{value} task{'s' if value != 1 else ''}"
    return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def collect(sweeps: str | Path | Sequence[str | Path]) -> Collection:
    """Every job of one or several sweep folders; methods labelled by what varies among them."""
    sweeps = [sweeps] if isinstance(sweeps, (str, Path)) else list(sweeps)
    runs, failed = [], []
    for sweep in sweeps:
        for folder in job_folders(Path(sweep)):
            run = load_run(folder)
            (runs.append(run) if run is not None else failed.append(folder))
    datasets = Counter(str(r.attributes["data"]) for r in runs if r.attributes.get("data"))  # records name it since v0.1
    if len(datasets) > 1:
        found = ", ".join(f"{name} ({count} runs)" for name, count in datasets.items())
        raise ConfigError(
            f"The runs come from different datasets ({found}): one report compares one dataset; report each separately."
        )
    varying = [name for name in ("model", "tasks", "lr") if len({r.attributes.get(name) for r in runs}) > 1]
    arms = _arms_that_separate(runs, ("model", "tasks", "lr"))
    for run in runs:
        labels = [_attribute_label(n, run.attributes.get(n)) for n in varying]
        labels += [f"{group}={run.attributes['arms'].get(group)}" for group in arms]
        if labels:
            run.method = f"{run.method} ({', '.join(labels)})"
    return Collection(runs, failed)


def _arms_that_separate(runs: Sequence[Run], attributes: Sequence[str]) -> list[str]:
    """Experiment arm groups (``nyud_arm``) whose choice differs between runs that strategy, model,
    task count and learning rate would otherwise merge (two MTL baselines on different backbones)."""
    groups = sorted({g for r in runs for g in r.attributes.get("arms", {})})
    separating = []
    for group in groups:
        seen: dict[tuple, set] = {}
        for run in runs:
            key = (run.method, *(run.attributes.get(a) for a in attributes))
            seen.setdefault(key, set()).add(run.attributes.get("arms", {}).get(group))
        if any(len(choices) > 1 for choices in seen.values()):
            separating.append(group)
    return separating


def delta_metrics(runs: Sequence[Run], shown: Sequence[str]) -> list[str]:
    """The T terms of Delta_MTL: one metric per task, as the runs' evaluators declared them
    (``task_metrics`` in metrics.json: REFUGE's auc, dice_od, dice_oc, fovea_error_px), merged over
    runs that cover different tasks (IDRiD's classifier, segmenter and multi-task network), kept to
    the shown columns (``--metrics`` naming three of four tasks' metrics compares runs on those three:
    a joint network trained on three of the tasks beside the four-task one); every shown task
    metric when the runs declare none or declare two metrics for one task."""
    merged: dict[str, str] = {}
    for run in runs:
        for task, metric in (run.attributes.get("task_metrics") or {}).items():
            if merged.setdefault(task, metric) != metric:
                return list(shown)
    return [m for m in merged.values() if m in shown] if merged else list(shown)


def baseline_values(
    values: Mapping[tuple[str, str], Mapping[str, float]],
    methods: Sequence[str],
    baselines: Sequence[str],
    task_metrics: Sequence[str],
) -> dict[str, float] | None:
    """Each task metric's mean over the runs of the baseline method that reports it; None when a
    baseline is absent or ambiguous, or when two baselines report the same metric."""
    found = [resolve_baseline(methods, b) for b in baselines]
    resolved = [b for b in found if b is not None]
    if not resolved or len(resolved) < len(found):
        return None
    base: dict[str, float] = {}
    for metric in task_metrics:
        reporting = [b for b in resolved if values.get((b, metric))]
        if len(reporting) > 1:
            return None
        if reporting:
            base[metric] = mean_std(list(values[(reporting[0], metric)].values()))[0]
    return base


def resolve_baseline(methods: Sequence[str], baseline: str) -> str | None:
    """``baseline`` itself, or the one method labelled ``"<baseline> (...)"``; None if absent or ambiguous."""
    if baseline in methods:
        return baseline
    candidates = [m for m in methods if m.startswith(f"{baseline} (")]
    return candidates[0] if len(candidates) == 1 else None


@dataclass
class Table:
    methods: list[str]
    metrics: list[str]
    values: dict[tuple[str, str], dict[str, float]]  # (method, metric) -> {pair_key: value}
    best: dict[str, str]
    p_values: dict[tuple[str, str], float]
    delta: dict[str, float]
    delta_metrics: list[str]
    missing: dict[str, list[str]]
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)  # (method, metric, pair key)
    delta_interval: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95% t interval over runs
    ranks: dict[str, float] = field(default_factory=dict)  # mean rank over the task metrics
    declared_lower: set[str] = field(default_factory=set)
    unresolved_baselines: list[str] = field(default_factory=list)  # baselines naming no single method

    def mean(self, method: str, metric: str) -> float:
        return mean_std(list(self.values.get((method, metric), {}).values()))[0]


def build_table(collection: Collection, metrics: Sequence[str] | None = None, baseline: str | Sequence[str] = "stl") -> Table:
    runs = collection.runs
    methods = sorted({r.method for r in runs})
    all_metrics = sorted({m for r in runs for m in r.metrics})
    metrics = list(metrics) if metrics else [m for m in all_metrics if m not in RESOURCE_COLUMNS.values()]
    metrics += [m for m in RESOURCE_COLUMNS.values() if m in all_metrics and m not in metrics]
    values: dict[tuple[str, str], dict[str, float]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for run in runs:
        for metric, value in run.metrics.items():
            values.setdefault((run.method, metric), {})[run.pair_key] = value
            seen[(run.method, metric, run.pair_key)] = seen.get((run.method, metric, run.pair_key), 0) + 1
    # two runs of one method and fold/seed reporting the same metric: neither value is kept
    # (e.g. the mean over datasets of single-task runs, each on one dataset)
    conflicts = sorted(key for key, count in seen.items() if count > 1)
    for method, metric, pair_key in conflicts:
        values[(method, metric)].pop(pair_key, None)
    keys = {r.pair_key for r in runs}
    missing = {m: sorted(keys - {r.pair_key for r in runs if r.method == m}) for m in methods}
    best, p_values = {}, {}
    declared_lower = {m for r in runs for m in (r.attributes.get("lower_is_better") or ())}
    for metric in metrics:
        means = {m: mean_std(list(values.get((m, metric), {}).values()))[0] for m in methods}
        finite = {m: v for m, v in means.items() if not math.isnan(v)}
        if not finite:
            continue
        chooser = min if lower_is_better(metric, declared_lower) else max
        best[metric] = chooser(finite, key=lambda m: finite[m])
        if metric in RESOURCE_COLUMNS.values():
            continue  # parameters and timings: no significance test
        for method in methods:
            if method != best[metric]:
                p_values[(method, metric)] = paired_t_test(
                    values.get((best[metric], metric), {}), values.get((method, metric), {})
                )
    task_metrics = delta_metrics(runs, [m for m in metrics if m not in RESOURCE_COLUMNS.values()])
    delta, interval = {}, {}
    base = baseline_values(values, methods, [baseline] if isinstance(baseline, str) else list(baseline), task_metrics)
    if base is not None:
        for method in methods:
            mine = {m: mean_std(list(values.get((method, m), {}).values()))[0] for m in task_metrics}
            delta[method] = delta_mtl(mine, base, task_metrics, declared_lower)
            # one Delta_MTL per fold or seed (the baseline's means fixed): their mean is delta[method]
            keys = set.intersection(*(set(values.get((method, m), {})) for m in task_metrics)) if task_metrics else set()
            per_run = [
                delta_mtl({m: values[(method, m)][k] for m in task_metrics}, base, task_metrics, declared_lower) for k in keys
            ]
            interval[method] = t_interval(per_run)
    task_means = {
        method: {m: mean_std(list(values.get((method, m), {}).values()))[0] for m in task_metrics} for method in methods
    }
    ranks = mean_ranks(task_means, task_metrics, declared_lower) if len(methods) > 1 else {}
    names = [baseline] if isinstance(baseline, str) else list(baseline)
    unresolved = [b for b in names if resolve_baseline(methods, b) is None]
    return Table(
        methods,
        metrics,
        values,
        best,
        p_values,
        delta,
        task_metrics,
        missing,
        conflicts,
        interval,
        ranks,
        declared_lower,
        unresolved,
    )


def _delta_text(table: Table, method: str) -> str:
    value = table.delta.get(method, math.nan)
    if math.isnan(value):
        return "-"
    low, high = table.delta_interval.get(method, (math.nan, math.nan))
    if math.isnan(low):
        return f"{value:+.2f}"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"


def _rank_text(table: Table, method: str) -> str:
    rank = table.ranks.get(method, math.nan)
    return "-" if math.isnan(rank) else f"{rank:.2f}"


def in_percent(metric: str) -> bool:
    """Shares shown in percent: AUC, Dice, accuracies, IoU, average precision (``ap_<class>``,
    ``*_map``) and F1 (``*_mf1``)."""
    return (
        any(w in metric for w in ("auc", "dice", "acc", "iou")) or metric.startswith("ap_") or metric.endswith(("_map", "_mf1"))
    )


def _cell(table: Table, method: str, metric: str, bold: tuple[str, str]) -> str:
    samples = list(table.values.get((method, metric), {}).values())
    if not samples:
        return "-"
    mean, std = mean_std(samples)
    scale = 100.0 if in_percent(metric) else 1e-9 if metric == "GFLOPs" else 1.0
    digits = 0 if metric == "parameters" else 2 if scale != 1.0 else 4
    text = f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    best = table.best.get(metric)
    best_mean = mean_std(list(table.values.get((best, metric), {}).values()))[0] if best else math.nan
    if best is not None and math.isclose(mean, best_mean, rel_tol=1e-12, abs_tol=1e-15):
        text = f"{bold[0]}{text}{bold[1]}"  # the best, and every method tied with it
    return text + significance_mark(table.p_values.get((method, metric), math.nan))


def to_markdown(table: Table, collection: Collection) -> str:
    header = ["method", *table.metrics] + (["Δ_MTL (%) [95% CI]"] if table.delta else []) + (["mean rank"] if table.ranks else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in table.methods:
        row = [method] + [_cell(table, method, m, ("**", "**")) for m in table.metrics]
        if table.delta:
            row.append(_delta_text(table, method))
        if table.ranks:
            row.append(_rank_text(table, method))
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "AUC, Dice, accuracy, IoU, AP and F1 in percent. Best mean in bold; * p < 0.05, ** p < 0.01 "
        "(paired t-test of the best method against that method, paired by fold or seed).",
    ]
    if table.delta:
        lines += [
            f"Δ_MTL: mean relative change against the baseline over {', '.join(table.delta_metrics)} "
            "(sign flipped where lower is better); - where a baseline value is 0; in brackets the 95% "
            "Student t interval over folds or seeds (each run against the baseline's means)."
        ]
    if table.ranks:
        lines += [f"Mean rank: each method's rank on {', '.join(table.delta_metrics)} (1 = best, ties averaged), averaged."]
    if table.unresolved_baselines:
        lines += [
            f"No Δ_MTL: the baseline {', '.join(repr(b) for b in table.unresolved_baselines)} names no single method "
            f"of this table (--baseline takes a method as labelled above)."
        ]
    lines += problems(table, collection)
    return "\n".join(lines) + "\n"


def problems(table: Table, collection: Collection) -> list[str]:
    lines = []
    for folder in collection.failed:
        failure = folder / "failure.json"
        record = read_record(failure) if failure.is_file() else None
        if record is not None:
            lines.append(f"- failed ({record.get('kind')}): {folder}: {record.get('message')}")
        elif (folder / "metrics.json").is_file():
            lines.append(f"- unreadable metrics.json (truncated or not JSON), left out: {folder}")
        else:
            lines.append(f"- unfinished (no metrics.json, no failure record): {folder}")
    for method, keys in table.missing.items():
        if keys:
            lines.append(f"- {method}: missing {', '.join(keys)}")
    for method, metric, pair_key in table.conflicts:
        lines.append(f"- {method}, {pair_key}: several runs report {metric}; left out rather than one picked")
    return (["", "Missing or failed runs:"] + lines) if lines else ["", "All runs present."]


def to_latex(table: Table) -> str:
    columns = "l" + "c" * (len(table.metrics) + (1 if table.delta else 0) + (1 if table.ranks else 0))
    header = (
        ["Method", *[m.replace("_", r"\_") for m in table.metrics]]
        + ([r"$\Delta_{MTL}$ (\%) [95\% CI]"] if table.delta else [])
        + (["Mean rank"] if table.ranks else [])
    )
    lines = [rf"\begin{{tabular}}{{{columns}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for method in table.methods:
        cells = [_cell(table, method, m, (r"\textbf{", "}")).replace("±", r"$\pm$") for m in table.metrics]
        cells = [
            c.replace("**", "$^{**}$") if c.endswith("**") else c.replace("*", "$^{*}$") if c.endswith("*") else c for c in cells
        ]
        row = [method.replace("_", r"\_"), *cells]
        if table.delta:
            row.append(_delta_text(table, method))
        if table.ranks:
            row.append(_rank_text(table, method))
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_csv(table: Table, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["method", "metric", "mean", "std", "n", "p_value_vs_best", "delta_mtl", "delta_ci_low", "delta_ci_high", "mean_rank"]
        )
        for method in table.methods:
            for metric in table.metrics:
                samples = list(table.values.get((method, metric), {}).values())
                mean, std = mean_std(samples)
                writer.writerow(
                    [
                        method,
                        metric,
                        mean,
                        std,
                        len(samples),
                        table.p_values.get((method, metric), ""),
                        table.delta.get(method, ""),
                        *table.delta_interval.get(method, ("", "")),
                        table.ranks.get(method, ""),
                    ]
                )


def write_report(
    sweeps: str | Path | Sequence[str | Path],
    output: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    baseline: str | Sequence[str] = "stl",
    overlay_methods: Sequence[str] | None = None,
) -> Path:
    """Tables and figures of one or several sweep folders, into ``output`` (default
    ``<first sweep>/report``). ``overlay_methods``: the methods of the overlay figure (default:
    the baseline and the method with the best mean AUC)."""
    folders = [Path(sweeps)] if isinstance(sweeps, (str, Path)) else [Path(s) for s in sweeps]
    collection = collect(folders)
    if not collection.runs:
        raise FileNotFoundError(f"No finished run (metrics.json) under {', '.join(map(str, folders))}.")
    table = build_table(collection, metrics, baseline)
    output = Path(output) if output else folders[0] / "report"
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.md").write_text(to_markdown(table, collection))
    (output / "results.tex").write_text(to_latex(table))
    write_csv(table, output / "results.csv")
    plot_roc(collection.runs, output / "roc.png")
    plot_curves(collection.runs, output / "val_loss.png")
    plot_metric_curves(collection.runs, output / "val_metrics.png", table.delta_metrics)
    plot_lr_sensitivity(collection.runs, output)
    if len(table.delta_metrics) == 2:
        stds = {
            m: {k: mean_std(list(table.values.get((m, k), {}).values()))[1] for k in table.delta_metrics} for m in table.methods
        }
        means = {m: {k: table.mean(m, k) for k in table.delta_metrics} for m in table.methods}
        plot_pareto(means, stds, table.delta_metrics, output / "pareto.png", table.declared_lower)
    chosen = list(overlay_methods) if overlay_methods else _default_overlay_methods(table, baseline)
    if chosen:
        overlay_from_runs(collection.runs, chosen, output / "overlay.png")
    for run in collection.runs:  # task-balance plots of the runs trained with callbacks=diagnostics
        diagnostics = run.folder / "diagnostics.csv"
        if diagnostics.is_file():
            frame = read_diagnostics(diagnostics)
            name = f"{run.method}_{run.pair_key}".replace(" ", "")
            plot_per_layer(frame, output / f"balance_layers_{name}.png")
            plot_per_step(frame, output / f"balance_steps_{name}.png")
    return output


def _default_overlay_methods(table: Table, baseline: str | Sequence[str]) -> list[str]:
    """The best method by AUC and the baseline (Pascal et al. 2022 Fig. 4: MTL-IO and STL); without an AUC
    column (IDRiD: Roy 2025's table compares three networks) the first four methods."""
    if "auc" not in table.best:
        return table.methods[:4]
    first = baseline if isinstance(baseline, str) else baseline[0]
    chosen = [m for m in (table.best.get("auc"), resolve_baseline(table.methods, first)) if m is not None]
    chosen = list(dict.fromkeys(chosen))
    return chosen if len(chosen) == 2 else table.methods[:2]
