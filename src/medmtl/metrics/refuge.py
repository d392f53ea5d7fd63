"""REFUGE metrics of seed 000 (METHODS.md sections 3-4), accumulated image by image.

Per image: OD and OC probability maps are thresholded at 0.5 and reduced to their largest
connected component; Dice = 2|P & G| / (|P| + |G|) (1 when both are empty), averaged over images.
The fovea is the centre of mass of the predicted heatmap; its Euclidean error is reported on the
network grid (``fovea_error_grid``; 256 px in seed 000) and in original-image pixels
(``fovea_error_px``, the grid offsets scaled back by original_size / grid_size per axis).

Glaucoma: ``auc_fc`` from the classifier's probability; ``auc_vcdr`` from a logistic regression on
the predicted vCDR, fitted on the ground-truth vCDRs of the training fold; ``auc`` from the mean of
the two probabilities (the seed's final score). AUCs use scikit-learn; with one class only they
are NaN (and said so in the log).
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from medmtl.data.heatmap import centre_of_mass
from medmtl.postprocess import binarize, largest_connected_component, vertical_cup_to_disc_ratio

log = logging.getLogger(__name__)


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
    """Collects per-image results with :meth:`update`; :meth:`compute` returns the metrics."""

    def __init__(self, train_vcdr: np.ndarray, train_labels: np.ndarray):
        self.vcdr_classifier = fit_vcdr_classifier(train_vcdr, train_labels)
        self.reset()

    def reset(self) -> None:
        self.records: dict[str, list] = {k: [] for k in (
            "index", "label", "p_fc", "vcdr_pred", "vcdr_true", "dice_od", "dice_oc",
            "fovea_error_grid", "fovea_error_px", "fovea_pred", "fovea_true")}

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
        return arrays
