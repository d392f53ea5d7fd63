"""MedMNIST metrics per dataset, as MedMNIST v2 reports them: AUC and ACC.

- binary: AUC of the sigmoid score; ACC at threshold 0.5.
- multi-class (and ordinal, scored as multi-class): AUC = mean over classes of the one-vs-rest AUC
  of the softmax scores; ACC of the arg-max.
- multi-label: AUC = mean over labels of each label's AUC; ACC = mean over labels of the accuracy
  at threshold 0.5.
AUCs from scikit-learn; a class or label with a single value in the evaluated set is left out of
the mean (NaN when none is left). ``auc_mean`` / ``acc_mean`` average the datasets, ``*_mean_3d``
the 3D ones (Schafer et al. 2024 compares the 3D tasks' mean accuracy with MedMNIST's 3D CNN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medmtl.tasks import Task


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else math.nan


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def auc_and_accuracy(kind: str, labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """``labels``: (N,) class indices or (N, L) for multi-label; ``scores``: probabilities,
    (N,) for binary, (N, C) for multi-class, (N, L) for multi-label."""
    if kind == "binary":
        return _auc(labels, scores), float(((scores > 0.5) == labels.astype(bool)).mean())
    if kind == "multiclass":
        per_class = [_auc((labels == c).astype(int), scores[:, c]) for c in range(scores.shape[1])]
        return _mean(per_class), float((scores.argmax(axis=1) == labels).mean())
    if kind == "multilabel":
        per_label = [_auc(labels[:, j], scores[:, j]) for j in range(scores.shape[1])]
        return _mean(per_label), float(((scores > 0.5) == labels.astype(bool)).mean())
    raise ValueError(f"No MedMNIST metric for task kind {kind!r}.")


class MedMNISTEvaluator:
    """Collects the scores of each dataset's batches; :meth:`compute` gives ``<flag>_auc``,
    ``<flag>_acc`` and their means over the datasets."""

    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("scores", "labels")

    LOWER_IS_BETTER: frozenset[str] = frozenset()  # AUC and accuracy

    def __init__(self, tasks: Sequence[Task]):
        self.tasks = {t.name: t for t in tasks}
        self.TASK_METRICS = {name: f"{name}_auc" for name in self.tasks}  # Delta_MTL: one per task
        self.reset()

    def reset(self) -> None:
        self.scores: dict[str, list[np.ndarray]] = {name: [] for name in self.tasks}
        self.labels: dict[str, list[np.ndarray]] = {name: [] for name in self.tasks}

    @torch.no_grad()
    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        for name, task in self.tasks.items():
            if name not in batch or name not in outputs:
                continue
            logits = outputs[name].float()
            probabilities = torch.softmax(logits, dim=1) if task.kind == "multiclass" else torch.sigmoid(logits)
            self.scores[name].append(probabilities.cpu().numpy())
            self.labels[name].append(batch[name].cpu().numpy())

    def compute(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, task in self.tasks.items():
            if not self.scores[name]:
                continue
            auc, accuracy = auc_and_accuracy(task.kind, np.concatenate(self.labels[name]), np.concatenate(self.scores[name]))
            metrics[f"{name}_auc"], metrics[f"{name}_acc"] = auc, accuracy
        for suffix, names in (("", list(self.tasks)), ("_3d", [n for n, t in self.tasks.items() if t.metadata.get("is_3d")])):
            for metric in ("auc", "acc"):
                values = [metrics[f"{n}_{metric}"] for n in names if f"{n}_{metric}" in metrics]
                if values:
                    metrics[f"{metric}_mean{suffix}"] = _mean(values)
        return metrics

    def predictions(self) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.tasks:
            if self.scores[name]:
                arrays[f"{name}_scores"] = np.concatenate(self.scores[name])
                arrays[f"{name}_labels"] = np.concatenate(self.labels[name])
        return arrays
