"""Accuracy of image-level classification tasks: ``<task>_acc`` per task and ``acc_mean``.

Multi-class: the arg-max of the logits against the class index; binary: the logit's sign (a
probability above 0.5) against the 0/1 target. Counts are kept as integers, so the result is the
exact fraction of correct predictions, and merged over ranks by summing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medmtl.tasks import Task


class AccuracyEvaluator:
    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("correct", "seen", "predicted", "labels")
    LOWER_IS_BETTER: frozenset[str] = frozenset()

    def __init__(self, tasks: Sequence[Task]):
        unsupported = [t.name for t in tasks if t.kind not in ("multiclass", "binary")]
        if unsupported:
            raise ValueError(f"AccuracyEvaluator scores multiclass and binary tasks; {unsupported} are neither.")
        self.tasks = {t.name: t for t in tasks}
        self.TASK_METRICS = {name: f"{name}_acc" for name in self.tasks}
        self.reset()

    def reset(self) -> None:
        self.correct: dict[str, int] = {name: 0 for name in self.tasks}
        self.seen: dict[str, int] = {name: 0 for name in self.tasks}
        self.predicted: dict[str, list[np.ndarray]] = {name: [] for name in self.tasks}
        self.labels: dict[str, list[np.ndarray]] = {name: [] for name in self.tasks}

    @torch.no_grad()
    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        for name, task in self.tasks.items():
            if name not in outputs or task.target_key not in batch:
                continue
            logits, target = outputs[name], batch[task.target_key]
            predicted = logits.argmax(dim=1) if task.kind == "multiclass" else (logits.reshape(-1) > 0).long()
            target = target.reshape(-1).long()
            self.correct[name] += int((predicted == target).sum())
            self.seen[name] += int(target.numel())
            self.predicted[name].append(predicted.cpu().numpy())
            self.labels[name].append(target.cpu().numpy())

    def compute(self) -> dict[str, float]:
        metrics = {f"{name}_acc": self.correct[name] / self.seen[name] for name in self.tasks if self.seen[name]}
        if metrics:
            metrics["acc_mean"] = float(np.mean(list(metrics.values())))
        return metrics

    def predictions(self) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.tasks:
            if self.predicted[name]:
                arrays[f"{name}_predicted"] = np.concatenate(self.predicted[name])
                arrays[f"{name}_labels"] = np.concatenate(self.labels[name])
        return arrays
