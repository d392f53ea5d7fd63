"""Resize REFUGE images and masks once, into the content-keyed cache (:mod:`medmtl.data.cache`).

Originals are 1634-2124 px. An entry holds the resized image (INTER_AREA), the resized mask
(nearest neighbour, values stay 0/128/255) and the original (width, height), needed to report the
fovea error in original pixels. Its key covers the image and mask files and the size. Building an
entry is where the image and its mask are first decoded, so that is where they are checked: both
decoded completely, the mask in the REFUGE encoding and of the image's size, the fovea on the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from medmtl.data.cache import SampleCache, source_key
from medmtl.data.errors import DatasetError
from medmtl.data.images import check_point_inside, read_refuge_mask, read_rgb
from medmtl.data.refuge_layout import RefugeSample


def build_entry(sample: RefugeSample, size: int) -> dict[str, np.ndarray]:
    image = read_rgb(sample.image)
    mask = read_refuge_mask(sample.mask)
    if image.shape[:2] != mask.shape[:2]:
        raise DatasetError(f"{sample.mask} is {mask.shape[1]}x{mask.shape[0]}, its image {image.shape[1]}x{image.shape[0]}.")
    height, width = mask.shape
    check_point_inside(sample.fovea_xy, width, height, f"{sample.annotation or 'the spreadsheet'}, image {sample.id}, fovea")
    return {
        "image": cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA),
        "mask": cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST),
        "original_wh": np.array([width, height], dtype=np.int64),
    }


def ensure_cache(cache: SampleCache, samples: Sequence[RefugeSample], size: int) -> list[Path]:
    """The cache file of every sample, built where missing or out of date."""
    entries = [
        (f"{size}px/{s.split}/{s.id}", source_key([s.image, s.mask], size=size), lambda s=s: build_entry(s, size))
        for s in samples
    ]
    cache.ensure(entries, "REFUGE images")
    return [cache.path(name, key) for name, key, _ in entries]
