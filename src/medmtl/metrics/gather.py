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
attribute by attribute. Rows gathered from lists are grouped by rank, not in the split's order:
metrics do not depend on the order, and ``predictions.npz`` keeps each row's sample index where the
evaluator records one.
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
    states = reducer.gather_objects(accumulated_state(evaluator))
    for name in evaluator.accumulated:
        setattr(evaluator, name, merge([state[name] for state in states]))
