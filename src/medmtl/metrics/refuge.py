"""REFUGE metrics of Pascal et al. 2022 (docs/methods.md), accumulated image by image.

Per image: OD and OC probability maps are thresholded at 0.5 and reduced to their largest
connected component; Dice = 2|P & G| / (|P| + |G|) (1 when both are empty), averaged over images.
The fovea is the centre of mass of the predicted heatmap; its Euclidean error is reported on the
network grid (``fovea_error_grid``; 256 px in Pascal et al. 2022) and in original-image pixels
(``fovea_error_px``, the grid offsets scaled back by original_size / grid_size per axis).

Glaucoma: ``auc_fc`` from the classifier's probability; ``auc_vcdr`` from a logistic regression on
the predicted vCDR, fitted on the ground-truth vCDRs of the training fold; ``auc`` from the mean of
the two probabilities (Pascal et al. 2022's final score). AUCs use scikit-learn; with one class only they
are NaN (and said so in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from medmtl.data.heatmap import centre_of_mass
from medmtl.postprocess import binarize, largest_connected_component, vertical_cup_to_disc_ratio

log = logging.getLogger(__name__)

#: What is kept of each example image (``predictions.npz`` keys ``example_<name>``).
EXAMPLE_KEYS = ("index", "label", "image", "od_pred", "oc_pred", "od_true", "oc_true", "fovea_pred", "fovea_true")


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    prediction, target = prediction.astype(bool), target.astype(bool)
    denominator = prediction.sum() + target.sum()
    if denominator == 0:
        return 1.0
    return float(2.0 * np.logical_and(prediction, target).sum() / denominator)


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        log.warning("AUC undefined: the evaluated set has a single class.")
        return float("nan")
    return float(roc_auc_score(labels, scores))


def fit_vcdr_classifier(train_vcdr: np.ndarray, train_labels: np.ndarray) -> LogisticRegression | None:
    """Logistic regression glaucoma ~ vCDR on the training fold's ground truth (None with one class)."""
    if len(np.unique(train_labels)) < 2:
        log.warning("vCDR logistic regression not fitted: the training labels have a single class.")
        return None
    return LogisticRegression().fit(np.asarray(train_vcdr).reshape(-1, 1), np.asarray(train_labels))


class RefugeEvaluator:
    """Collects per-image results with :meth:`update`; :meth:`compute` returns the metrics.

    ``examples_per_class``: the first images of each glaucoma label are also kept whole (input,
    ground-truth and post-processed predicted masks) for overlay figures; evaluation loaders are
    not shuffled, so every run keeps the same images.
    """

    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("records", "examples")

    #: one metric per task: the T terms of Delta_MTL (docs/methods.md)
    TASK_METRICS: Mapping[str, str] = {"glaucoma": "auc", "od": "dice_od", "oc": "dice_oc", "fovea": "fovea_error_px"}
    LOWER_IS_BETTER: AbstractSet[str] = frozenset({"fovea_error_grid", "fovea_error_px", "vcdr_mae"})

    def __init__(self, train_vcdr: np.ndarray, train_labels: np.ndarray, examples_per_class: int = 4):
        self.vcdr_classifier = fit_vcdr_classifier(train_vcdr, train_labels)
        self.examples_per_class = examples_per_class
        self.reset()

    def reset(self) -> None:
        self.records: dict[str, list] = {
            k: []
            for k in (
                "index",
                "label",
                "p_fc",
                "vcdr_pred",
                "vcdr_true",
                "dice_od",
                "dice_oc",
                "fovea_error_grid",
                "fovea_error_px",
                "fovea_pred",
                "fovea_true",
            )
        }
        self.examples: dict[str, list] = {k: [] for k in EXAMPLE_KEYS}

    @torch.no_grad()
    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        od_prob = torch.sigmoid(outputs["od"].float()).cpu().numpy()
        oc_prob = torch.sigmoid(outputs["oc"].float()).cpu().numpy()
        fovea_pred = centre_of_mass(torch.sigmoid(outputs["fovea"].float())).cpu()
        fovea_true = batch["fovea_xy"].float().cpu()
        grid = torch.tensor(outputs["fovea"].shape[-2:][::-1], dtype=torch.float32)  # (W, H)
        scale = batch["original_wh"].float().cpu() / grid
        records = self.records
        records["p_fc"] += torch.sigmoid(outputs["glaucoma"].float()).cpu().tolist()
        records["label"] += batch["glaucoma"].cpu().int().tolist()
        records["index"] += batch["index"].cpu().tolist()
        records["fovea_error_grid"] += (fovea_pred - fovea_true).norm(dim=1).tolist()
        records["fovea_error_px"] += ((fovea_pred - fovea_true) * scale).norm(dim=1).tolist()
        records["fovea_pred"] += fovea_pred.tolist()
        records["fovea_true"] += fovea_true.tolist()
        od_true, oc_true = batch["od"].cpu().numpy(), batch["oc"].cpu().numpy()
        for i in range(od_prob.shape[0]):
            od = largest_connected_component(binarize(od_prob[i]))
            oc = largest_connected_component(binarize(oc_prob[i]))
            records["dice_od"].append(dice(od, od_true[i]))
            records["dice_oc"].append(dice(oc, oc_true[i]))
            records["vcdr_pred"].append(vertical_cup_to_disc_ratio(od, oc))
            records["vcdr_true"].append(vertical_cup_to_disc_ratio(od_true[i], oc_true[i]))
            self._keep_example(batch, i, od, oc, fovea_pred[i].tolist(), fovea_true[i].tolist())

    def _keep_example(
        self,
        batch: Mapping[str, torch.Tensor],
        i: int,
        od: np.ndarray,
        oc: np.ndarray,
        fovea_pred: list[float],
        fovea_true: list[float],
    ) -> None:
        label = int(batch["glaucoma"][i])
        if sum(1 for kept in self.examples["label"] if kept == label) >= self.examples_per_class:
            return
        image = (batch["image"][i].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        kept = self.examples
        kept["index"].append(int(batch["index"][i]))
        kept["label"].append(label)
        kept["image"].append(image)
        kept["od_pred"].append(od.astype(bool))
        kept["oc_pred"].append(oc.astype(bool))
        kept["od_true"].append(batch["od"][i].cpu().numpy() > 0.5)
        kept["oc_true"].append(batch["oc"][i].cpu().numpy() > 0.5)
        kept["fovea_pred"].append(fovea_pred)
        kept["fovea_true"].append(fovea_true)

    def glaucoma_probabilities(self) -> dict[str, np.ndarray]:
        p_fc = np.asarray(self.records["p_fc"], dtype=np.float64)
        if self.vcdr_classifier is None:
            p_vcdr = np.full_like(p_fc, 0.5)
        else:
            p_vcdr = self.vcdr_classifier.predict_proba(np.asarray(self.records["vcdr_pred"]).reshape(-1, 1))[:, 1]
        return {"fc": p_fc, "vcdr": p_vcdr, "combined": (p_fc + p_vcdr) / 2.0}

    def compute(self) -> dict[str, float]:
        if not self.records["label"]:
            return {}
        labels = np.asarray(self.records["label"])
        probabilities = self.glaucoma_probabilities()
        vcdr_error = np.abs(np.asarray(self.records["vcdr_pred"]) - np.asarray(self.records["vcdr_true"]))
        return {
            "auc": safe_auc(labels, probabilities["combined"]),
            "auc_fc": safe_auc(labels, probabilities["fc"]),
            "auc_vcdr": safe_auc(labels, probabilities["vcdr"]),
            "dice_od": float(np.mean(self.records["dice_od"])),
            "dice_oc": float(np.mean(self.records["dice_oc"])),
            "fovea_error_grid": float(np.mean(self.records["fovea_error_grid"])),
            "fovea_error_px": float(np.mean(self.records["fovea_error_px"])),
            "vcdr_mae": float(vcdr_error.mean()),
        }

    def predictions(self) -> dict[str, np.ndarray]:
        """Per-image arrays (for ROC curves and overlays in reports)."""
        arrays = {k: np.asarray(v) for k, v in self.records.items()}
        arrays.update({f"p_{k}": v for k, v in self.glaucoma_probabilities().items()})
        if self.examples["index"]:
            arrays.update({f"example_{k}": np.stack([np.asarray(x) for x in v]) for k, v in self.examples.items()})
        return arrays
