"""IDRiD metrics (seed 001 and the IDRiD challenge), over the samples labelled for each task.

- Grading (``retinopathy``, ``edema``): accuracy of the arg-max.
- Lesions: Dice and IoU of the foreground (background excluded), pixels thresholded at 0.5 and
  pooled over the split's labelled images; pixel-level AUPR (the challenge's metric) with
  torchmetrics' binned average precision (200 thresholds: exact AUPR would keep every pixel score).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torchmetrics.classification import BinaryAveragePrecision

from medmtl.tasks import Task


class IdridEvaluator:
    def __init__(self, tasks: Sequence[Task], aupr_thresholds: int = 200):
        self.tasks = {t.name: t for t in tasks}
        self.grading = [t.name for t in tasks if t.kind == "multiclass"]
        self.lesions = [t.name for t in tasks if t.is_dense]
        self.TASK_METRICS = {name: "acc" if name in self.grading else "dice" for name in self.tasks}
        self.TASK_METRICS = {name: f"{name}_{metric}" for name, metric in self.TASK_METRICS.items()}
        self.aupr = {name: BinaryAveragePrecision(thresholds=aupr_thresholds) for name in self.lesions}
        self.reset()

    def reset(self) -> None:
        self.correct = {name: [0, 0] for name in self.grading}
        self.overlap = {name: [0.0, 0.0, 0.0] for name in self.lesions}  # intersection, predicted, true
        for metric in self.aupr.values():
            metric.reset()

    @torch.no_grad()
    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        for name in self.tasks:
            if name not in outputs or name not in batch:
                continue
            present = batch.get(f"present/{name}")
            rows = present.bool().cpu() if present is not None else torch.ones(len(batch[name]), dtype=torch.bool)
            if not rows.any():
                continue
            output, target = outputs[name].detach().float().cpu()[rows], batch[name].cpu()[rows]
            if name in self.grading:
                self.correct[name][0] += int((output.argmax(dim=1) == target).sum())
                self.correct[name][1] += int(rows.sum())
            else:
                probability = torch.sigmoid(output)
                predicted, truth = probability > 0.5, target > 0.5
                counts = self.overlap[name]
                counts[0] += float((predicted & truth).sum())
                counts[1] += float(predicted.sum())
                counts[2] += float(truth.sum())
                self.aupr[name].update(probability.flatten(), truth.flatten().long())

    def compute(self) -> dict[str, float]:
        metrics = {}
        for name, (right, total) in self.correct.items():
            if total:
                metrics[f"{name}_acc"] = right / total
        for name, (intersection, predicted, truth) in self.overlap.items():
            if predicted + truth == 0:
                continue
            metrics[f"{name}_dice"] = 2 * intersection / (predicted + truth)
            metrics[f"{name}_iou"] = intersection / (predicted + truth - intersection)
            metrics[f"{name}_aupr"] = float(self.aupr[name].compute()) if truth > 0 else math.nan
        return metrics

    def predictions(self) -> dict[str, np.ndarray]:
        return {}
