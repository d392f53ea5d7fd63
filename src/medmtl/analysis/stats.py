"""Statistics of a results table (METHODS.md section 4).

- mean +/- sample standard deviation (ddof = 1) over folds or seeds;
- paired Student's t-test of the best method against each other method, per metric, pairing runs
  by fold (or seed): * p < 0.05, ** p < 0.01 (seed 002);
- Delta_MTL (survey Eq. 10) = (1/T) sum_i (-1)^{l_i} (M_m,i - M_b,i) / M_b,i, with l_i = 1 where a
  lower value is better, against the single-task baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

#: metrics where lower is better (every other metric: higher is better)
LOWER_IS_BETTER = ("loss", "error", "mae", "mse", "rmse", "seconds", "parameters")


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


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


def delta_mtl(method: Mapping[str, float], baseline: Mapping[str, float], metrics: Sequence[str]) -> float:
    """Mean relative improvement over the baseline, in percent, sign-corrected per metric."""
    terms = []
    for metric in metrics:
        m, b = method.get(metric), baseline.get(metric)
        if m is None or b is None or b == 0 or math.isnan(m) or math.isnan(b):
            return math.nan
        sign = -1.0 if lower_is_better(metric) else 1.0
        terms.append(sign * (m - b) / b)
    return 100.0 * float(np.mean(terms)) if terms else math.nan
