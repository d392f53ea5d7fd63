"""Key performance indicators in [0, 1] per task kind, for DTP (survey 3.1.4).

- ``binary`` (and ``multilabel``, per label): accuracy at threshold 0.5; ``multiclass``: arg-max accuracy;
- ``regression``: max(0, 1 - mean |error| / mean |target|);
- ``segmentation``: Dice of the thresholded map (1 when prediction and target are both empty);
- ``heatmap``: soft Dice 2 sum(p y) / (sum p + sum y) of the sigmoid map against the target;
- ``semantic``: pixel accuracy over the labelled pixels;
- ``depth``: max(0, 1 - mean relative error) over the valid pixels;
- ``normals``: 1 - mean angle / 180 degrees over the valid pixels;
- ``edge``: F1 of the map thresholded at 0.5 (no distance tolerance: a training-time indicator).

Each is "higher is better" and in [0, 1], as DTP needs; the regression ones are our choice (the
survey leaves KPIs for regression tasks open), documented here and in the docs.

Computed on the samples labelled for the task, without gradient, from sums (``kpi_statistics``)
so that a distributed step gets the union's KPI by adding the ranks' statistics.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medmtl.losses import normal_angles
from medmtl.tasks import Task


def _labelled(task: Task, output: torch.Tensor, target: torch.Tensor, batch: Mapping[str, torch.Tensor]):
    mask = task.present(batch)
    if mask is None:
        return output, target
    mask = mask.to(device=output.device, dtype=torch.bool)
    return output[mask], target[mask]


def _dice_sum(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over samples of the per-sample Dice (1 when prediction and target are both empty)."""
    prediction, target = prediction.flatten(1), target.flatten(1)
    denominator = prediction.sum(1) + target.sum(1)
    overlap = 2 * (prediction * target).sum(1)
    return torch.where(denominator > 0, overlap / denominator.clamp_min(1e-12), torch.ones_like(denominator)).sum()


def _count(mask_or_tensor: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(mask_or_tensor.numel()), device=mask_or_tensor.device)


@torch.no_grad()
def kpi_statistics(task: Task, output: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """(numerator, denominator) whose ratio :func:`kpi_from_statistics` turns into the KPI; both
    are sums over samples or pixels, so the statistics of several batches (or of the ranks of a
    distributed step) add up to those of their union. None when nothing is labelled."""
    output, target = _labelled(task, output.float(), batch[task.target_key].float(), batch)
    if output.shape[0] == 0:
        return None
    if task.kind in ("semantic", "depth", "normals"):
        return _dense_statistics(task, output, target)
    if task.kind == "multiclass":
        correct = output.argmax(dim=1).float() == target.reshape(-1)
        return torch.stack([correct.float().sum(), _count(correct)])
    if task.kind == "regression":  # ratio: sum |error| / sum |target|
        return torch.stack([(output - target).abs().sum(), target.abs().sum()])
    probability = torch.sigmoid(output)
    if task.kind in ("binary", "multilabel"):
        correct = (probability > 0.5).float() == target
        return torch.stack([correct.float().sum(), _count(correct)])
    samples = torch.tensor(float(output.shape[0]), device=output.device)
    if task.kind in ("segmentation", "edge"):
        return torch.stack([_dice_sum((probability > 0.5).float(), target), samples])
    return torch.stack([_dice_sum(probability, target), samples])


def kpi_from_statistics(task: Task, statistics: torch.Tensor) -> torch.Tensor:
    """The KPI in [0, 1] from (numerator, denominator) (module docstring)."""
    numerator, denominator = statistics[0], statistics[1]
    ratio = numerator / denominator.clamp_min(1e-12)
    if task.kind in ("regression", "depth"):
        return (1.0 - ratio).clamp_min(0.0)
    if task.kind == "normals":
        return 1.0 - ratio / 180.0
    return ratio


def task_kpi(task: Task, output: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    statistics = kpi_statistics(task, output, batch)
    return None if statistics is None else kpi_from_statistics(task, statistics)


def _dense_statistics(task: Task, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    if task.kind == "semantic":
        labelled = torch.ne(target, -1 if task.ignore_index is None else task.ignore_index)
        if not bool(labelled.any()):
            return None
        correct = (output.argmax(dim=1) == target.long())[labelled]
        return torch.stack([correct.float().sum(), _count(correct)])
    if task.kind == "depth":
        valid = target > 0
        if not bool(valid.any()):
            return None
        relative = ((output - target).abs() / target.clamp_min(1e-6))[valid]
        return torch.stack([relative.sum(), _count(relative)])
    angles = normal_angles(output, target)
    return torch.stack([angles.sum(), _count(angles)]) if angles.numel() else None
