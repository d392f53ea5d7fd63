"""One evaluator over the union of the ranks' evaluation shards (exact distributed evaluation).

Under DDP each rank evaluates its own shard of a split (every sample once: the shards are not
padded, :func:`medmtl.data.sampling.evaluation_sampler`). At the end of the stage each rank's
accumulated state is gathered and merged into its evaluator, which then computes the metrics of
the whole split, as one process would: AUCs, the REFUGE vCDR logistic regression and Dice over all
predictions, confusion matrices and counters summed.

An evaluator names what ``reset`` creates in ``accumulated`` (a tuple of attribute names). Merge
rules, by type: dicts merge key by key (keys of any rank), lists concatenate in rank order (per-batch
records, kept examples), numbers, tensors and arrays add (counters, histograms, confusion
matrices), and objects with their own ``accumulated`` (a scene metric, a binned AUPR) merge
attribute by attribute. Rows gathered from lists are grouped by rank; metrics do not depend on
the order, and :func:`in_split_order` puts the per-sample arrays of ``predictions.npz`` back in the
split's order where the evaluator records each sample's ``index``. Kept examples (for overlays)
are each rank's first ones: up to R times as many as one process keeps.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from medmtl.distributed import Reducer


def merge(values: list[Any]) -> Any:
    """The merge of the ranks' values of one accumulated attribute (module docstring)."""
    first = values[0]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for value in values for k in value))
        return {k: merge([value[k] for value in values if k in value]) for k in keys}
    if isinstance(first, list):
        return [item for value in values for item in value]
    if isinstance(first, (numbers.Number, torch.Tensor, np.ndarray)):
        total = values[0]
        for value in values[1:]:
            total = total + value
        return total
    if hasattr(first, "accumulated"):
        for name in first.accumulated:
            setattr(first, name, merge([getattr(value, name) for value in values]))
        return first
    raise TypeError(f"cannot merge accumulated values of type {type(first).__name__}")


def accumulated_state(evaluator) -> dict[str, Any]:
    return {name: getattr(evaluator, name) for name in evaluator.accumulated}


def gather_evaluator(evaluator, reducer: Reducer) -> None:
    """Replace ``evaluator``'s accumulated state by the merge of every rank's (in place)."""
    if not reducer.distributed:
        return
    for name, value in merge(reducer.gather_objects(accumulated_state(evaluator))).items():
        setattr(evaluator, name, value)


def in_split_order(predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``predictions`` with the per-sample arrays (first dimension: one row per entry of
    ``index``) sorted by ``index``, and the kept examples by ``example_index``: the order one
    process writes."""
    ordered = dict(predictions)
    for prefix in ("", "example_"):
        index = predictions.get(f"{prefix}index")
        if index is None:
            continue
        order = np.argsort(np.asarray(index), kind="stable")
        for key, array in predictions.items():
            mine = key.startswith("example_") == (prefix == "example_")
            if mine and isinstance(array, np.ndarray) and array.ndim and array.shape[0] == len(order):
                ordered[key] = array[order]
    return ordered
