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

Computed on the samples labelled for the task, without gradient.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medmtl.tasks import Task


def _labelled(task: Task, output: torch.Tensor, target: torch.Tensor, batch: Mapping[str, torch.Tensor]):
    mask = task.present(batch)
    if mask is None:
        return output, target
    mask = mask.to(device=output.device, dtype=torch.bool)
    return output[mask], target[mask]


def _dice(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prediction, target = prediction.flatten(1), target.flatten(1)
    denominator = prediction.sum(1) + target.sum(1)
    overlap = 2 * (prediction * target).sum(1)
    return torch.where(denominator > 0, overlap / denominator.clamp_min(1e-12), torch.ones_like(denominator)).mean()


@torch.no_grad()
def task_kpi(task: Task, output: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    output, target = _labelled(task, output.float(), batch[task.target_key].float(), batch)
    if output.shape[0] == 0:
        return None
    if task.kind in ("semantic", "depth", "normals"):
        return _dense_kpi(task, output, target)
    if task.kind == "multiclass":
        return (output.argmax(dim=1).float() == target.reshape(-1)).float().mean()
    if task.kind == "regression":
        return (1.0 - (output - target).abs().mean() / target.abs().mean().clamp_min(1e-12)).clamp_min(0.0)
    probability = torch.sigmoid(output)
    if task.kind in ("binary", "multilabel"):
        return ((probability > 0.5).float() == target).float().mean()
    if task.kind == "segmentation":
        return _dice((probability > 0.5).float(), target)
    if task.kind == "edge":
        return _dice((probability > 0.5).float(), target)
    return _dice(probability, target)


def _dense_kpi(task: Task, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    from medmtl.metrics.scene import normal_angles

    if task.kind == "semantic":
        labelled = torch.ne(target, -1 if task.ignore_index is None else task.ignore_index)
        if not bool(labelled.any()):
            return None
        return (output.argmax(dim=1) == target.long())[labelled].float().mean()
    if task.kind == "depth":
        valid = target > 0
        if not bool(valid.any()):
            return None
        relative = ((output - target).abs() / target.clamp_min(1e-6))[valid].mean()
        return (1.0 - relative).clamp_min(0.0)
    angles = normal_angles(output, target)
    return 1.0 - angles.mean() / 180.0 if angles.numel() else None
