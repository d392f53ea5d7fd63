"""Dense scene metrics (NYUDv2), accumulated over a whole split, never averaged per batch.

- ``semantic``: a C x C confusion matrix of the labelled pixels (``ignore_index`` left out);
  ``<task>_miou`` = mean over the classes that occur (in the ground truth or the prediction) of
  TP / (TP + FP + FN), ``<task>_pixel_acc`` = correct / labelled pixels. This is the dataset-level
  mIoU of Liu et al. 2019 and Vandenhende et al. 2022 (torchmetrics' MulticlassJaccardIndex with
  ``average="macro"`` agrees, see the tests).
- ``depth`` (valid pixels: ground truth > 0): ``abs_err`` = sum |d' - d| / N, ``rel_err`` =
  sum |d' - d| / d / N, ``rmse`` = sqrt(sum (d' - d)^2 / N), N the valid pixels of the split. (The
  public MTAN code averages per batch; a per-pixel average does not depend on the batch size.)
- ``normals`` (valid pixels: a non-zero ground-truth vector): the angle between the normalised
  prediction and the ground truth, in degrees: ``angle_mean``, ``angle_median`` (from a histogram
  of 0.01-degree bins: exact to 0.01 degree without keeping every pixel) and the shares of pixels
  ``within_11_25``, ``within_22_5``, ``within_30`` degrees (exact counts).
- ``edge``: ``odsf``, the F-measure at the optimal dataset scale, i.e. the best threshold for the
  whole split, of the sigmoid edge map. How it approximates the BSDS protocol (Martin et al. 2004,
  used by the survey): precision counts predicted edge pixels within ``r`` pixels (Chebyshev
  distance, a (2r+1)^2 square) of a ground-truth edge pixel, recall counts ground-truth edge
  pixels within ``r`` of a predicted one, with ``r = max(1, round(0.0075 x image diagonal))``
  (the BSDS maximum distance); unlike BSDS there is no non-maximum suppression (thinning) of the
  prediction and no one-to-one matching of pixels, so thick predicted edges are not penalised and
  the numbers are not directly comparable with published odsF values. ``edge_thresholds`` (50)
  evenly spaced thresholds in (0, 1).

``TASK_METRICS`` names one metric per task for Delta_MTL: mIoU, depth RMSE (the survey's Table
V), mean normal angle, odsF. ``LOWER_IS_BETTER`` lists the metrics whose improvement is a decrease.
``predictions()`` keeps the first ``examples`` test images whole (input and each task's
prediction and ground truth) for figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medmtl.losses import normal_angles
from medmtl.tasks import Task

SCENE_KINDS = ("semantic", "depth", "normals", "edge")
ANGLE_BINS = 18000  # 0.01-degree bins over [0, 180]
WITHIN = {"11_25": 11.25, "22_5": 22.5, "30": 30.0}


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of (B, H, W) masks by a (2 radius + 1)^2 square."""
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


class SemanticMetric:
    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("confusion",)

    def __init__(self, num_classes: int, ignore_index: int | None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        predicted, target = logits.argmax(dim=1).flatten().cpu(), target.flatten().cpu().long()
        keep = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        index = target[keep] * self.num_classes + predicted[keep]
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        c = self.confusion.double()
        true_positive = c.diag()
        union = c.sum(0) + c.sum(1) - true_positive
        present = union > 0
        total = c.sum()
        if total == 0:
            return {}
        return {"miou": float((true_positive[present] / union[present]).mean()), "pixel_acc": float(true_positive.sum() / total)}


class DepthMetric:
    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("sums", "count")

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64)  # |e|, |e| / d, e^2
        self.count = 0

    def __init__(self):
        self.reset()

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        prediction, target = prediction.detach().double().cpu(), target.detach().double().cpu()
        valid = target > 0
        error = (prediction - target)[valid]
        self.sums += torch.stack([error.abs().sum(), (error.abs() / target[valid]).sum(), (error**2).sum()])
        self.count += int(valid.sum())

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        abs_sum, rel_sum, squared_sum = (float(v) / self.count for v in self.sums)
        return {"abs_err": abs_sum, "rel_err": rel_sum, "rmse": math.sqrt(squared_sum)}


class NormalsMetric:
    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("histogram", "angle_sum", "count", "within")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.histogram = torch.zeros(ANGLE_BINS, dtype=torch.int64)
        self.angle_sum, self.count = 0.0, 0
        self.within = dict.fromkeys(WITHIN, 0)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        angles = normal_angles(prediction.detach(), target.detach()).double().cpu()
        self.histogram += torch.bincount((angles / 180.0 * ANGLE_BINS).long().clamp(0, ANGLE_BINS - 1), minlength=ANGLE_BINS)
        self.angle_sum += float(angles.sum())
        self.count += angles.numel()
        for key, limit in WITHIN.items():
            self.within[key] += int((angles < limit).sum())

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        cumulative = self.histogram.cumsum(0)
        median_bin = int(torch.searchsorted(cumulative, torch.tensor((self.count + 1) // 2)))
        metrics = {"angle_mean": self.angle_sum / self.count, "angle_median": (median_bin + 0.5) * 180.0 / ANGLE_BINS}
        metrics |= {f"within_{key}": count / self.count for key, count in self.within.items()}
        return metrics


class EdgeMetric:
    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("matched_predicted", "predicted", "matched_truth", "truth")

    def __init__(self, thresholds: int = 50, tolerance: float = 0.0075):
        self.thresholds = (torch.arange(thresholds, dtype=torch.float64) + 0.5) / thresholds
        self.tolerance = tolerance
        self.reset()

    def reset(self) -> None:
        n = len(self.thresholds)
        self.matched_predicted, self.predicted = torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
        self.matched_truth, self.truth = torch.zeros(n, dtype=torch.int64), 0

    def radius(self, height: int, width: int) -> int:
        return max(1, round(self.tolerance * math.hypot(height, width)))

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        probability = torch.sigmoid(logits.detach().float())
        truth = target.detach() > 0.5
        radius = self.radius(*truth.shape[-2:])
        near_truth = dilate(truth, radius)
        self.truth += int(truth.sum())
        for i, threshold in enumerate(self.thresholds.tolist()):
            predicted = probability >= threshold
            self.predicted[i] += int(predicted.sum())
            self.matched_predicted[i] += int((predicted & near_truth).sum())
            self.matched_truth[i] += int((truth & dilate(predicted, radius)).sum())

    def compute(self) -> dict[str, float]:
        if not self.truth:
            return {}
        precision = self.matched_predicted.double() / self.predicted.double().clamp_min(1)
        recall = self.matched_truth.double() / self.truth
        f = torch.where(
            precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), torch.zeros_like(precision)
        )
        return {"odsf": float(f.max())}


#: per kind: (the metric standing for the task in Delta_MTL, the metrics where lower is better)
KIND_METRICS = {
    "semantic": ("miou", ()),
    "depth": ("rmse", ("abs_err", "rel_err", "rmse")),
    "normals": ("angle_mean", ("angle_mean", "angle_median")),
    "edge": ("odsf", ()),
}


class SceneEvaluator:
    """Dataset-level metrics of the scene tasks of ``tasks`` (see the module docstring)."""

    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("metrics", "examples")

    def __init__(self, tasks: Sequence[Task], edge_thresholds: int = 50, examples: int = 4):
        self.tasks = {t.name: t for t in tasks if t.kind in SCENE_KINDS}
        self.metrics: dict[str, SemanticMetric | DepthMetric | NormalsMetric | EdgeMetric] = {}
        for name, task in self.tasks.items():
            if task.kind == "semantic":
                self.metrics[name] = SemanticMetric(task.num_outputs, task.ignore_index)
            elif task.kind == "depth":
                self.metrics[name] = DepthMetric()
            elif task.kind == "normals":
                self.metrics[name] = NormalsMetric()
            else:
                self.metrics[name] = EdgeMetric(edge_thresholds)
        self.TASK_METRICS = {name: f"{name}_{KIND_METRICS[t.kind][0]}" for name, t in self.tasks.items()}
        self.LOWER_IS_BETTER = frozenset(f"{name}_{m}" for name, t in self.tasks.items() for m in KIND_METRICS[t.kind][1])
        self.examples_wanted = examples
        self.reset()

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self.examples: dict[str, list[np.ndarray]] = {}

    @torch.no_grad()
    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        for name, task in self.tasks.items():
            if name in outputs and task.target_key in batch:
                self.metrics[name].update(outputs[name], batch[task.target_key])
        self._keep_examples(outputs, batch)

    def compute(self) -> dict[str, float]:
        return {f"{name}_{key}": value for name, metric in self.metrics.items() for key, value in metric.compute().items()}

    def _keep_examples(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        kept = len(self.examples.get("image", []))
        for i in range(min(self.examples_wanted - kept, len(batch["image"]))):
            self.examples.setdefault("image", []).append(
                (batch["image"][i].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            )
            self.examples.setdefault("index", []).append(np.asarray(int(batch["index"][i]) if "index" in batch else kept + i))
            for name, task in self.tasks.items():
                if name not in outputs:
                    continue
                output = outputs[name][i].float()
                if task.kind == "semantic":
                    output = output.argmax(dim=0)
                elif task.kind == "normals":
                    output = F.normalize(output, dim=0)
                elif task.kind == "edge":
                    output = torch.sigmoid(output)
                self.examples.setdefault(f"{name}_pred", []).append(output.cpu().numpy())
                self.examples.setdefault(f"{name}_true", []).append(batch[task.target_key][i].cpu().numpy())

    def predictions(self) -> dict[str, np.ndarray]:
        return {f"example_{key}": np.stack(values) for key, values in self.examples.items() if values}
