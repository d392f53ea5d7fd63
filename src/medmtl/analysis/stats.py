"""Statistics of a results table (docs/methods.md).

- mean +/- sample standard deviation (ddof = 1) over folds or seeds;
- paired Student's t-test of the best method against each other method, per metric, pairing runs
  by fold (or seed): * p < 0.05, ** p < 0.01 (Hervella et al. 2024);
- Delta_MTL (survey Eq. 10) = (1/T) sum_i (-1)^{l_i} (M_m,i - M_b,i) / M_b,i, with l_i = 1 where a
  lower value is better, against the single-task baseline; its 95% confidence interval over folds
  or seeds is the Student t interval of the per-run values (each run's metrics against the
  baseline's means: Delta_MTL is linear in the method's values, so their mean is the table's value);
- mean rank: each method's rank per task metric (1 = best, ties share the average rank), averaged
  over the task metrics, as in the multi-task literature's "MR" column;
- Pareto front: the methods no other method beats on every metric at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from scipy import stats

#: metrics where lower is better (every other metric: higher is better)
LOWER_IS_BETTER = ("loss", "error", "mae", "mse", "rmse", "seconds", "parameters", "GFLOPs")


def lower_is_better(metric: str, declared: Collection[str] = ()) -> bool:
    """Whether a decrease of ``metric`` is an improvement: declared by the run's evaluator
    (``lower_is_better`` in metrics.json, e.g. a normals angle) or named so: one of the words of
    the name (split at ``_``, ``/``, ``-`` and spaces) is an error, a loss, ... Whole words only:
    ``semseg_miou`` holds the letters "mse" and is still higher-is-better."""
    words = set(re.split(r"[_/\s-]+", metric))
    return metric in declared or any(word in words for word in LOWER_IS_BETTER)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def paired_t_test(best: Mapping[str, float], other: Mapping[str, float]) -> float:
    """Two-sided p-value of the paired t-test on the keys (folds or seeds) both methods have."""
    keys = sorted(set(best) & set(other))
    if len(keys) < 2:
        return math.nan
    differences = np.array([best[k] for k in keys]) - np.array([other[k] for k in keys])
    if np.allclose(differences, 0):
        return 1.0
    if np.allclose(differences, differences[0]):
        return math.nan  # a constant difference: the t statistic is undefined
    return float(stats.ttest_1samp(differences, 0.0).pvalue)


def significance_mark(p_value: float) -> str:
    if math.isnan(p_value):
        return ""
    return "**" if p_value < 0.01 else "*" if p_value < 0.05 else ""


def delta_mtl(
    method: Mapping[str, float], baseline: Mapping[str, float], metrics: Sequence[str], declared_lower: Collection[str] = ()
) -> float:
    """Mean relative improvement over the baseline, in percent, sign-corrected per metric."""
    terms = []
    for metric in metrics:
        m, b = method.get(metric), baseline.get(metric)
        if m is None or b is None or b == 0 or math.isnan(m) or math.isnan(b):
            return math.nan
        sign = -1.0 if lower_is_better(metric, declared_lower) else 1.0
        terms.append(sign * (m - b) / b)
    return 100.0 * float(np.mean(terms)) if terms else math.nan


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student t confidence interval of the mean: mean +/- t_{(1+level)/2, n-1} s / sqrt(n); NaN for
    fewer than two values."""
    array = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if array.size < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))
    return float(array.mean()) - half, float(array.mean()) + half


def mean_ranks(
    means: Mapping[str, Mapping[str, float]], metrics: Sequence[str], declared_lower: Collection[str] = ()
) -> dict[str, float]:
    """``{method: mean over metrics of its rank}`` from ``means[method][metric]``; NaN for a method
    missing a metric (it cannot be ranked on it)."""
    methods = list(means)
    ranks: dict[str, list[float]] = {m: [] for m in methods}
    for metric in metrics:
        present = [m for m in methods if not math.isnan(means[m].get(metric, math.nan))]
        values = np.asarray([means[m][metric] for m in present], dtype=np.float64)
        signed = values if lower_is_better(metric, declared_lower) else -values
        ranked = dict(zip(present, stats.rankdata(signed, method="average"))) if present else {}
        for m in methods:
            ranks[m].append(float(ranked.get(m, math.nan)))
    return {m: float(np.mean(r)) if r else math.nan for m, r in ranks.items()}


def pareto_front(
    points: Mapping[str, Mapping[str, float]], metrics: Sequence[str], declared_lower: Collection[str] = ()
) -> list[str]:
    """The methods of ``points[method][metric]`` that no other method dominates (at least as good
    on every metric and better on one)."""
    signs = [-1.0 if lower_is_better(m, declared_lower) else 1.0 for m in metrics]

    def better_or_equal(a, b):
        return all(s * points[a][m] >= s * points[b][m] for s, m in zip(signs, metrics))

    def strictly_better(a, b):
        return any(s * points[a][m] > s * points[b][m] for s, m in zip(signs, metrics))

    return [b for b in points if not any(better_or_equal(a, b) and strictly_better(a, b) for a in points if a != b)]
