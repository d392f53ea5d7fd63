"""Per-sample task losses.

Every loss here maps (model output, target) to a tensor of shape ``(B,)``: one value per sample,
so that the task can drop samples whose label is absent (partial labels) before averaging.
Model outputs are logits; the sigmoid is applied inside the loss for numerical stability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-averaged BCE, seed 000 Eq. (OD/OC): -(1/N) sum_i y_i log p_i + (1-y_i) log(1-p_i)."""
    loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return _per_sample_mean(loss)


def sigmoid_l1(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the sigmoid map and a heatmap target, averaged over pixels.

    Seed 000 writes the L1 as a sum over pixels; the mean is used here so that the loss does not
    scale with the image size (a constant factor H*W, irrelevant to Adam-based strategies).
    """
    return _per_sample_mean((torch.sigmoid(logits) - target.to(logits.dtype)).abs())


def binary_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), seed 000: FL = -(1 - p_t)^gamma log(p_t).

    p_t = p if y = 1 else 1 - p, with p = sigmoid(logit). gamma = 0 gives the BCE.
    log(p_t) is computed from logits (``-BCE-with-logits``) to stay finite for saturated outputs.
    """
    logits = logits.reshape(logits.shape[0], -1)
    target = target.reshape(target.shape[0], -1).to(logits.dtype)
    log_pt = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = log_pt.exp()
    return _per_sample_mean(-((1.0 - pt) ** gamma) * log_pt)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over C classes; ``target``: class indices (B,) or (B, 1)."""
    return F.cross_entropy(logits, target.reshape(-1).long(), reduction="none")


def multilabel_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE of L independent sigmoid outputs, averaged over the labels: (B, L) -> (B,)."""
    return _per_sample_mean(F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none"))


def softmax_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss -(1 - p_y)^gamma log p_y (Lin et al. 2017); gamma = 0 is the CE."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target.reshape(-1, 1).long()).squeeze(1)
    return -((1.0 - log_p.exp()) ** gamma) * log_p


def ce_plus_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Seed 001's grading loss: cross-entropy + focal loss."""
    return cross_entropy(logits, target) + softmax_focal(logits, target, gamma)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2 sum p y + eps) / (sum p + sum y + eps) per sample, p = sigmoid(logits)."""
    p = torch.sigmoid(logits).reshape(logits.shape[0], -1)
    y = target.reshape(target.shape[0], -1).to(p.dtype)
    return 1.0 - (2.0 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)


def focal_plus_dice(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Seed 001's lesion loss: pixel focal loss + soft Dice loss."""
    return binary_focal(logits, target, gamma) + soft_dice(logits, target)
