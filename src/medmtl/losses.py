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
    """Pixel-averaged BCE, Pascal et al. 2022 Eq. (OD/OC): -(1/N) sum_i y_i log p_i + (1-y_i) log(1-p_i)."""
    loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return _per_sample_mean(loss)


def sigmoid_l1(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the sigmoid map and a heatmap target, averaged over pixels.

    Pascal et al. 2022 writes the L1 as a sum over pixels; the mean is used here so that the loss does not
    scale with the image size (a constant factor H*W, irrelevant to Adam-based strategies).
    """
    return _per_sample_mean((torch.sigmoid(logits) - target.to(logits.dtype)).abs())


def binary_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), Pascal et al. 2022: FL = -alpha_t (1 - p_t)^gamma log(p_t).

    p_t = p if y = 1 else 1 - p, with p = sigmoid(logit); alpha_t = alpha if y = 1 else 1 - alpha,
    or 1 without ``alpha`` (Pascal et al. 2022). gamma = 0 and no alpha give the BCE.
    log(p_t) is computed from logits (``-BCE-with-logits``) to stay finite for saturated outputs.
    """
    logits = logits.reshape(logits.shape[0], -1)
    target = target.reshape(target.shape[0], -1).to(logits.dtype)
    log_pt = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = log_pt.exp()
    loss = -((1.0 - pt) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return _per_sample_mean(loss)


def scaled(logits: torch.Tensor, target: torch.Tensor, loss, factor: float) -> torch.Tensor:
    """``factor * loss(logits, target)`` (a picklable per-task loss scaling)."""
    return factor * loss(logits, target)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over C classes; ``target``: class indices (B,) or (B, 1)."""
    return F.cross_entropy(logits, target.reshape(-1).long(), reduction="none")


def multilabel_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE of L independent sigmoid outputs, averaged over the labels: (B, L) -> (B,)."""
    return _per_sample_mean(F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none"))


def squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over the values of each sample: (B, K) -> (B,)."""
    return _per_sample_mean((prediction - target.to(prediction.dtype)) ** 2)


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the values of each sample: (B, K) -> (B,) (EMOTIC's dimensions)."""
    return _per_sample_mean((prediction - target.to(prediction.dtype)).abs())


def softmax_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss -(1 - p_y)^gamma log p_y (Lin et al. 2017); gamma = 0 is the CE."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target.reshape(-1, 1).long()).squeeze(1)
    return -((1.0 - log_p.exp()) ** gamma) * log_p


def one_hot_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None) -> torch.Tensor:
    """Focal loss of C independent sigmoids against the one-hot target, averaged over the classes
    (the form of Roy 2025's code, torchvision's ``sigmoid_focal_loss`` on one-hot labels)."""
    one_hot = F.one_hot(target.reshape(-1).long(), logits.shape[1]).to(logits.dtype)
    return binary_focal(logits, one_hot, gamma, alpha)


GRADING_FOCALS = ("softmax", "one_hot")


def ce_plus_focal(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None, focal: str = "softmax"
) -> torch.Tensor:
    """Roy 2025's grading loss: cross-entropy + focal loss. ``focal``: ``softmax`` (Lin et al.'s
    multi-class form, -(1 - p_y)^gamma log p_y; ``alpha`` unused) or ``one_hot`` (sigmoids on the
    one-hot label with ``alpha``, as the authors' code)."""
    if focal == "one_hot":
        return cross_entropy(logits, target) + one_hot_focal(logits, target, gamma, alpha)
    return cross_entropy(logits, target) + softmax_focal(logits, target, gamma)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2 sum p y + eps) / (sum p + sum y + eps) per sample, p = sigmoid(logits)."""
    p = torch.sigmoid(logits).reshape(logits.shape[0], -1)
    y = target.reshape(target.shape[0], -1).to(p.dtype)
    return 1.0 - (2.0 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)


def focal_plus_dice(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None) -> torch.Tensor:
    """Roy 2025's lesion loss: pixel focal loss (``alpha``: 0.25 in the authors' code) + soft Dice loss."""
    return binary_focal(logits, target, gamma, alpha) + soft_dice(logits, target)


# ----- scene tasks (NYUDv2): losses over the valid pixels of each sample ------------------------------
def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per sample: the mean of ``values`` over its ``valid`` pixels; 0 for a sample without any."""
    values, valid = values.reshape(values.shape[0], -1), valid.reshape(valid.shape[0], -1).to(values.dtype)
    return (values * valid).sum(1) / valid.sum(1).clamp_min(1.0)


def semantic_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Softmax cross-entropy per pixel over C classes, averaged over each sample's labelled pixels:
    ``logits`` (B, C, H, W), ``target`` (B, H, W) class indices, ``ignore_index`` unlabelled."""
    target = target.long()
    per_pixel = F.cross_entropy(
        logits,
        target.clamp_min(0) if ignore_index < 0 else target,
        reduction="none",
        ignore_index=-100 if ignore_index < 0 else ignore_index,
    )
    return _masked_mean(per_pixel, target != ignore_index)


def depth_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|d_pred - d| averaged over each sample's valid pixels (target depth > 0; NYUDv2 marks
    missing Kinect depth with 0), as in Liu et al. 2019 and Hervella et al. 2024."""
    target = target.to(prediction.dtype)
    return _masked_mean((prediction - target).abs(), target > 0)


def _valid_normals(target: torch.Tensor) -> torch.Tensor:
    return target.abs().sum(dim=1) > 0  # (B, H, W): a zero target vector is an invalid pixel


def normals_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cos(n_pred, n) averaged over valid pixels, with n_pred the prediction normalised to unit
    length: the cosine-similarity objective of Liu et al. 2019 and Hervella et al. 2024
    ((B, 3, H, W) both)."""
    target = target.to(prediction.dtype)
    cosine = (F.normalize(prediction, dim=1) * target).sum(dim=1)
    return _masked_mean(1.0 - cosine, _valid_normals(target))


def normal_angles(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angles in degrees between the normalised predictions and the targets at the valid pixels
    ((B, 3, H, W) both; a flat tensor)."""
    valid = target.abs().sum(dim=1) > 0
    cosine = (F.normalize(prediction.float(), dim=1) * target.float()).sum(dim=1)
    return torch.rad2deg(torch.acos(cosine[valid].clamp(-1.0, 1.0)))


def normals_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the three components of |n_pred - n| (n_pred normalised), averaged over valid pixels
    (the normals loss of Vandenhende et al. 2022's code)."""
    target = target.to(prediction.dtype)
    return _masked_mean((F.normalize(prediction, dim=1) - target).abs().sum(dim=1), _valid_normals(target))


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, positive_weight: float = 0.95) -> torch.Tensor:
    """Class-balanced binary cross-entropy of edge maps (Vandenhende et al. 2022, after Xie & Tu's
    HED): -w y log p - (1 - w)(1 - y) log(1 - p) averaged over pixels, w = ``positive_weight``
    (edges are a few percent of the pixels)."""
    target = target.to(logits.dtype)
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    per_pixel = -(positive_weight * target * log_p + (1.0 - positive_weight) * (1.0 - target) * log_not_p)
    return _per_sample_mean(per_pixel)
