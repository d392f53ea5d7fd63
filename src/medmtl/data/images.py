"""Reading images and masks from disk, with one clear error per bad file.

Images are decoded with OpenCV (RGB, uint8). REFUGE masks are 8-bit images with
0 = optic cup, 128 = disc rim, 255 = background (DATASETS.md); decoding turns them into two
binary maps, OD = value < 255 (cup included) and OC = value == 0.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from medmtl.data.errors import DatasetError

cv2.setNumThreads(0)

REFUGE_MASK_VALUES = (0, 128, 255)


def _decode(path: Path, flag: int, what: str, expected: str) -> np.ndarray:
    """cv2.imread with one DatasetError for a missing file and one for an undecodable one."""
    if not Path(path).is_file():
        raise DatasetError(f"{what.capitalize()} file missing: {path}.")
    array = cv2.imread(str(path), flag)
    if array is None:
        raise DatasetError(f"Cannot decode {what} {path}: expected {expected}.")
    return array


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array."""
    return cv2.cvtColor(_decode(path, cv2.IMREAD_COLOR, "image", "a JPEG/PNG/BMP image file"), cv2.COLOR_BGR2RGB)


def read_refuge_mask(path: Path) -> np.ndarray:
    """Read a REFUGE disc/cup mask as (H, W) uint8 and check its values are within {0, 128, 255}."""
    mask = _decode(path, cv2.IMREAD_GRAYSCALE, "mask", "an 8-bit BMP/PNG image")
    unexpected = np.setdiff1d(np.unique(mask), REFUGE_MASK_VALUES)
    if unexpected.size:
        raise DatasetError(
            f"Mask {path} has values {unexpected[:8].tolist()} outside {{0, 128, 255}} "
            "(REFUGE encoding: 0 = cup, 128 = disc rim, 255 = background)."
        )
    return mask


def decode_refuge_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(OD, OC) binary uint8 maps: OD = value < 255, OC = value == 0."""
    return (mask < 255).astype(np.uint8), (mask == 0).astype(np.uint8)


def encode_refuge_mask(od: np.ndarray, oc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_refuge_mask` (the cup must lie inside the disc)."""
    mask = np.full(od.shape, 255, dtype=np.uint8)
    mask[od.astype(bool)] = 128
    mask[oc.astype(bool)] = 0
    return mask
