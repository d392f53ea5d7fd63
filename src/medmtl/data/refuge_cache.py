"""Resize REFUGE images and masks once and cache them under the data folder.

Originals are 1634-2124 px; training reads ``<root>/.medmtl_cache/<size>px/<split>/<id>.npz`` with
the resized image (INTER_AREA), the resized mask (nearest neighbour, values stay 0/128/255) and the
original (width, height), needed to report the fovea error in original pixels. Each file is
written atomically, so an interrupted build leaves no half-written entry; a rebuild only does the
missing ones.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from medmtl.data.errors import DatasetError
from medmtl.data.images import read_refuge_mask, read_rgb
from medmtl.data.refuge_layout import RefugeSample

log = logging.getLogger(__name__)

CACHE_DIR = ".medmtl_cache"


def cache_path(root: Path, sample: RefugeSample, size: int) -> Path:
    return Path(root) / CACHE_DIR / f"{size}px" / sample.split / f"{sample.id}.npz"


def build_entry(sample: RefugeSample, size: int) -> dict[str, np.ndarray]:
    image = read_rgb(sample.image)
    mask = read_refuge_mask(sample.mask)
    if image.shape[:2] != mask.shape[:2]:
        raise DatasetError(f"{sample.mask} is {mask.shape[1]}x{mask.shape[0]}, its image {image.shape[1]}x{image.shape[0]}.")
    height, width = mask.shape
    return {
        "image": cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA),
        "mask": cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST),
        "original_wh": np.array([width, height], dtype=np.int64),
    }


def ensure_cache(root: Path, samples: Sequence[RefugeSample], size: int) -> None:
    """Write the cache entries that do not exist yet, and log how long it took."""
    todo = [s for s in samples if not cache_path(root, s, size).is_file()]
    if not todo:
        return
    start = time.perf_counter()
    log.info("Resizing %d REFUGE images to %dpx into %s (once).", len(todo), size, Path(root) / CACHE_DIR)
    for sample in todo:
        target = cache_path(root, sample, size)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **build_entry(sample, size))
        os.replace(tmp, target)
    log.info("Cache built in %.1f s.", time.perf_counter() - start)


def load_entry(root: Path, sample: RefugeSample, size: int) -> dict[str, np.ndarray]:
    with np.load(cache_path(root, sample, size)) as data:
        return {k: data[k] for k in data.files}
