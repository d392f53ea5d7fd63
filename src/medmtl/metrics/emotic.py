"""EMOTIC metrics over a whole split (Kosti et al. 2020; Hervella et al. 2024, section 5.1.4).

Categories (26, from the 2-task setting's multi-label output or the 26 binary tasks, sigmoid
probabilities): ``ap_<category>`` the average precision of each category (torchmetrics'
``multilabel_average_precision``, exact, all thresholds), ``categories_map`` their mean,
``categories_mf1`` the mean over the categories of the F1 score at probability 0.5 (the paper
reports mF1 without its threshold; 0.5 is our choice). A category without a positive person in the
split has no AP or F1 and is left out of the means (named by its absence).
Dimensions (valence, arousal, dominance on 1-10): ``<dimension>_mae`` and their mean
``dimensions_mae``, ``dimensions_mse`` the mean squared error over the three.

``TASK_METRICS``: ``categories_map`` and ``dimensions_mae`` (2 tasks), ``ap_<category>`` per task
(26 tasks). ``predictions()`` keeps the per-person probabilities, dimensions and truths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multilabel_average_precision, multilabel_f1_score

from medmtl.data.emotic_layout import CATEGORIES, DIMENSIONS, category_task_name
from medmtl.tasks import Task

CATEGORY_TASKS = tuple(category_task_name(c) for c in CATEGORIES)


class EmoticEvaluator:
    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("records",)

    def __init__(self, tasks: Sequence[Task]):
        names = [t.name for t in tasks]
        self.per_category = all(name in names for name in CATEGORY_TASKS)
        self.has_dimensions = "dimensions" in names
        if self.per_category:
            self.TASK_METRICS = {name: f"ap_{name}" for name in CATEGORY_TASKS}
        else:
            self.TASK_METRICS = {"categories": "categories_map"} | (
                {"dimensions": "dimensions_mae"} if self.has_dimensions else {}
            )
        self.LOWER_IS_BETTER = frozenset({"dimensions_mae", "dimensions_mse", *(f"{d}_mae" for d in DIMENSIONS)})
        self.reset()

    def reset(self) -> None:
        self.records: dict[str, list[np.ndarray]] = {
            k: [] for k in ("probability", "truth", "dimensions", "dimensions_true", "index")
        }

    @torch.no_grad()
    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        if self.per_category:
            if not all(name in outputs for name in CATEGORY_TASKS):
                return
            logits = torch.stack([outputs[name].float().reshape(-1) for name in CATEGORY_TASKS], dim=1)
            truth = torch.stack([batch[name].float().reshape(-1) for name in CATEGORY_TASKS], dim=1)
        elif "categories" in outputs:
            logits, truth = outputs["categories"].float(), batch["categories"].float()
        else:
            return
        self.records["probability"].append(torch.sigmoid(logits).cpu().numpy())
        self.records["truth"].append(truth.cpu().numpy())
        if self.has_dimensions and "dimensions" in outputs:
            self.records["dimensions"].append(outputs["dimensions"].float().cpu().numpy())
            self.records["dimensions_true"].append(batch["dimensions"].float().cpu().numpy())
        if "index" in batch:
            self.records["index"].append(batch["index"].cpu().numpy())

    def compute(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.records["probability"]:
            probability = torch.from_numpy(np.concatenate(self.records["probability"]))
            truth = torch.from_numpy(np.concatenate(self.records["truth"])).round().int()
            labelled = truth.sum(0) > 0
            ap = multilabel_average_precision(probability, truth, num_labels=len(CATEGORIES), average=None)
            f1 = multilabel_f1_score(probability, truth, num_labels=len(CATEGORIES), threshold=0.5, average=None)
            for k, name in enumerate(CATEGORY_TASKS):
                if labelled[k]:
                    metrics[f"ap_{name}"] = float(ap[k])
            if labelled.any():
                metrics["categories_map"] = float(ap[labelled].mean())
                metrics["categories_mf1"] = float(f1[labelled].mean())
        if self.records["dimensions"]:
            error = np.concatenate(self.records["dimensions"]) - np.concatenate(self.records["dimensions_true"])
            for k, dimension in enumerate(DIMENSIONS):
                metrics[f"{dimension}_mae"] = float(np.abs(error[:, k]).mean())
            metrics["dimensions_mae"] = float(np.abs(error).mean())
            metrics["dimensions_mse"] = float((error**2).mean())
        return metrics

    def predictions(self) -> dict[str, np.ndarray]:
        return {f"emotic_{k}": np.concatenate(v) for k, v in self.records.items() if v}
