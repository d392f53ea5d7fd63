"""IDRiD metrics (Roy 2025 and the IDRiD challenge), over the samples labelled for each task.

- Grading (``retinopathy``, ``edema``): accuracy of the arg-max.
- Lesions: Dice and IoU of the foreground (background excluded), pixels thresholded at 0.5 and
  pooled over the split's labelled images; pixel-level AUPR (the challenge's metric) at 200
  fixed thresholds (:mod:`medmtl.metrics.aupr`; exact AUPR would keep every pixel's score).

Examples for figures (Roy 2025 Figs. 4-5): the first ``examples_per_set`` images labelled for a
lesion and the first labelled for a grade are kept whole -- input, predicted masks (probability
> 0.5), ground-truth masks with their presence, predicted grades and ground-truth grades (-1 where
the image has none) -- as ``example_*`` arrays of ``predictions.npz``, with the task names in
``example_lesion_names`` / ``example_grade_names``. Evaluation loaders are not shuffled and an
image's ``index`` does not depend on the task subset, so runs of different models keep the same
images where they share tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medmtl.metrics.aupr import BinnedAveragePrecision
from medmtl.tasks import Task

#: What is kept of each example image (``predictions.npz`` keys ``example_<name>``).
EXAMPLE_KEYS = ("index", "image", "lesion_pred", "lesion_true", "lesion_present", "grade_pred", "grade_true")


class IdridEvaluator:
    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("correct", "overlap", "aupr", "examples", "_kept_per_set")
    LOWER_IS_BETTER: frozenset[str] = frozenset()  # accuracies, Dice, IoU, AUPR

    def __init__(self, tasks: Sequence[Task], aupr_thresholds: int = 200, examples_per_set: int = 2):
        self.tasks = {t.name: t for t in tasks}
        self.grading = [t.name for t in tasks if t.kind == "multiclass"]
        self.lesions = [t.name for t in tasks if t.is_dense]
        self.TASK_METRICS = {name: "acc" if name in self.grading else "dice" for name in self.tasks}
        self.TASK_METRICS = {name: f"{name}_{metric}" for name, metric in self.TASK_METRICS.items()}
        self.aupr = {name: BinnedAveragePrecision(aupr_thresholds) for name in self.lesions}
        self.examples_per_set = examples_per_set
        self.reset()

    def reset(self) -> None:
        self.correct = {name: np.zeros(2, dtype=np.int64) for name in self.grading}  # right, labelled
        self.overlap = {name: np.zeros(3) for name in self.lesions}  # intersection, predicted, true
        for metric in self.aupr.values():
            metric.reset()
        self.examples: dict[str, list] = {k: [] for k in EXAMPLE_KEYS}
        self._kept_per_set = {"segmentation": 0, "grading": 0}

    @torch.no_grad()
    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        self._keep_examples(outputs, batch)
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
                self.aupr[name].update(probability, truth)

    def compute(self) -> dict[str, float]:
        metrics = {}
        for name, (right, total) in self.correct.items():
            if total:
                metrics[f"{name}_acc"] = float(right / total)
        for name, counts in self.overlap.items():
            intersection, predicted, truth = (float(v) for v in counts)
            if predicted + truth == 0:
                continue
            metrics[f"{name}_dice"] = 2 * intersection / (predicted + truth)
            metrics[f"{name}_iou"] = intersection / (predicted + truth - intersection)
            metrics[f"{name}_aupr"] = self.aupr[name].compute()
        return metrics

    def _labelled(self, batch: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
        """(B, len(names)) bool: which of ``names`` each sample is labelled for."""
        size = len(batch["image"])
        columns = [batch.get(f"present/{n}", torch.ones(size, dtype=torch.bool)).bool().cpu() for n in names]
        return torch.stack(columns, dim=1) if columns else torch.zeros(size, 0, dtype=torch.bool)

    def _keep_examples(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        lesion_present, grade_present = self._labelled(batch, self.lesions), self._labelled(batch, self.grading)
        for i in range(len(batch["image"])):
            image_set = "segmentation" if lesion_present[i].any() else "grading" if grade_present[i].any() else None
            if image_set is None or self._kept_per_set[image_set] >= self.examples_per_set:
                continue
            self._kept_per_set[image_set] += 1
            height, width = batch["image"].shape[-2:]
            kept = self.examples
            kept["index"].append(int(batch["index"][i]))
            kept["image"].append((batch["image"][i].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())
            kept["lesion_pred"].append(
                np.stack([torch.sigmoid(outputs[n][i].float()).cpu().numpy() > 0.5 for n in self.lesions])
                if self.lesions
                else np.zeros((0, height, width), dtype=bool)
            )
            kept["lesion_true"].append(
                np.stack([batch[n][i].cpu().numpy() > 0.5 for n in self.lesions])
                if self.lesions
                else np.zeros((0, height, width), dtype=bool)
            )
            kept["lesion_present"].append(lesion_present[i].numpy())
            kept["grade_pred"].append(np.array([int(outputs[n][i].argmax()) for n in self.grading], dtype=np.int64))
            kept["grade_true"].append(
                np.array([int(batch[n][i]) if grade_present[i, j] else -1 for j, n in enumerate(self.grading)], dtype=np.int64)
            )

    def predictions(self) -> dict[str, np.ndarray]:
        """The kept examples (see the module docstring); nothing per image beyond them."""
        if not self.examples["index"]:
            return {}
        arrays = {f"example_{k}": np.stack([np.asarray(x) for x in v]) for k, v in self.examples.items()}
        arrays["example_lesion_names"] = np.array(self.lesions, dtype=str)
        arrays["example_grade_names"] = np.array(self.grading, dtype=str)
        return arrays
