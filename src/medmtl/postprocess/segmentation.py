"""Segmentation post-processing of Pascal et al. 2022 (docs/methods.md).

- threshold the probability map at 0.5;
- keep the largest connected component (8-connectivity) to remove noise around the elliptic
  disc and cup;
- vCDR = (max column-sum of the OC map) / (max column-sum of the OD map): the ratio of the
  vertical extents, measured as the largest number of foreground pixels in one column.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def binarize(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return (np.asarray(probabilities) > threshold).astype(np.uint8)


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a binary (H, W) mask; an empty mask stays empty."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=_EIGHT_CONNECTED)
    if count <= 1:
        return (labels > 0).astype(np.uint8)
    sizes = np.bincount(labels.ravel())[1:]
    return (labels == 1 + int(np.argmax(sizes))).astype(np.uint8)


def vertical_cup_to_disc_ratio(od: np.ndarray, oc: np.ndarray) -> float:
    """vCDR of binary (H, W) maps; 0 when the disc is empty (no disc: no measurable cup)."""
    disc_height = int(np.asarray(od, dtype=bool).sum(axis=0).max(initial=0))
    if disc_height == 0:
        return 0.0
    cup_height = int(np.asarray(oc, dtype=bool).sum(axis=0).max(initial=0))
    return cup_height / disc_height
