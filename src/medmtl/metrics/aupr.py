"""Pixel-level area under the precision-recall curve at fixed thresholds (the IDRiD challenge's
lesion metric), from two histograms that stay small however many pixels are scored.

With thresholds t_j = j / (n - 1), j = 0..n-1, and counts of positive and negative pixels per
bin [t_j, t_{j+1}): TP_j = positives with p >= t_j, FP_j likewise, precision_j = TP_j / (TP_j +
FP_j) (0 where nothing is predicted), recall_j = TP_j / P; with the point (recall 0, precision 1)
appended, AP = -sum_j (recall_{j+1} - recall_j) precision_j: torchmetrics' binned
``BinaryAveragePrecision``, whose vectorised update would build an (pixels x thresholds x 4n)
matrix when deterministic algorithms are on (``trainer.deterministic``) -- 15 GB for one batch of
two 64 x 96 images. Counting happens on the CPU (``torch.bincount`` is deterministic there).
"""

from __future__ import annotations

import math

import torch


class BinnedAveragePrecision:
    #: what ``reset`` creates, merged over ranks (:mod:`medmtl.metrics.gather`)
    accumulated: tuple[str, ...] = ("positives", "negatives")

    def __init__(self, thresholds: int = 200):
        if thresholds < 2:
            raise ValueError(f"AUPR needs at least 2 thresholds, got {thresholds}.")
        self.thresholds = torch.linspace(0, 1, thresholds)
        self.reset()

    def reset(self) -> None:
        n = len(self.thresholds)
        self.positives = torch.zeros(n, dtype=torch.int64)
        self.negatives = torch.zeros(n, dtype=torch.int64)

    def update(self, probability: torch.Tensor, truth: torch.Tensor) -> None:
        """``probability`` in [0, 1] and boolean ``truth``, any matching shapes."""
        p = probability.detach().float().flatten().cpu().clamp(0, 1)
        truth = truth.flatten().cpu().bool()
        bins = torch.bucketize(p, self.thresholds, right=True) - 1  # largest j with t_j <= p
        n = len(self.thresholds)
        self.positives += torch.bincount(bins[truth], minlength=n)
        self.negatives += torch.bincount(bins[~truth], minlength=n)

    def compute(self) -> float:
        """AP, or NaN when no positive pixel was seen (recall undefined)."""
        total_positive = int(self.positives.sum())
        if total_positive == 0:
            return math.nan
        tp = self.positives.flip(0).cumsum(0).flip(0).double()
        fp = self.negatives.flip(0).cumsum(0).flip(0).double()
        predicted = tp + fp
        precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
        recall = tp / total_positive
        precision = torch.cat([precision, torch.ones(1, dtype=torch.float64)])
        recall = torch.cat([recall, torch.zeros(1, dtype=torch.float64)])
        return float(-((recall[1:] - recall[:-1]) * precision[:-1]).sum())
