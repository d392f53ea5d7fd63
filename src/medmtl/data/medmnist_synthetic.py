"""A synthetic MedMNIST: valid ``.npz`` files (keys, shapes, dtypes, label types) for any flag.

Each image carries its label: a bright disc whose position and size depend on the class (and, for
multi-label, one small square per positive label) on a noisy background, so that a network can
learn every task type; shapes follow ``INFO`` (channels, 2D or 3D, N x L labels). Split sizes are
configurable (small by default). The files do not carry the official MD5, so the synthetic
datamodule does not verify it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmtl.data.medmnist import SPLITS, MedMNISTDataModule, file_name, flag_info, is_3d
from medmtl.utils.folder_lock import exclusive

log = logging.getLogger(__name__)
MARKER = ".synthetic_medmnist.json"


def synthetic_labels(flag: str, n: int, rng: np.random.Generator) -> np.ndarray:
    info = flag_info(flag)
    n_labels = len(info["label"])
    if info["task"] == "multi-label, binary-class":
        return (rng.random((n, n_labels)) < 0.3).astype(np.uint8)
    return rng.integers(0, n_labels, size=(n, 1)).astype(np.uint8)


def _draw(label: np.ndarray, task: str, n_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size) grey image whose content encodes ``label``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = rng.normal(60, 20, (size, size))
    if task == "multi-label, binary-class":
        for j in np.flatnonzero(label):
            cx, cy = (j % 4 + 0.5) / 4, (j // 4 + 0.5) / 4
            image[(np.abs(xx - cx) < 0.08) & (np.abs(yy - cy) < 0.08)] += 140
        return image
    c = int(label[0])
    angle = 2 * np.pi * c / max(n_classes, 2)
    cx, cy = 0.5 + 0.25 * np.cos(angle), 0.5 + 0.25 * np.sin(angle)
    radius = 0.12 + 0.04 * (c % 3) + rng.normal(0, 0.01)
    image[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] += 150
    return image


def synthetic_images(flag: str, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    info = flag_info(flag)
    n_classes = len(info["label"])
    images = []
    for label in labels:
        if is_3d(flag):
            depth = size
            volume = np.stack(
                [_draw(label, info["task"], n_classes, size, rng) * (0.6 + 0.4 * np.sin(np.pi * d / depth)) for d in range(depth)]
            )
            images.append(volume)
        else:
            image = _draw(label, info["task"], n_classes, size, rng)
            if info["n_channels"] == 3:
                image = np.stack([image, image * 0.8, image * 0.6], axis=-1)
            images.append(image)
    return np.clip(np.stack(images), 0, 255).astype(np.uint8)


def write_synthetic_medmnist(
    root: str | Path, flags: Sequence[str], size: int = 28, n: Sequence[int] = (64, 32, 32), seed: int = 0
) -> list[Path]:
    """Write ``<flag>[_<size>].npz`` for every flag whose file is not there yet. One file per
    dataset, so a folder gathers the flags of several runs; each file is written whole (renamed
    into place) by one process at a time (a second one waits, then finds it)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    with exclusive(root / ".synthetic_medmnist.lock"):
        for k, flag in enumerate(flags):
            path = root / file_name(flag, size)
            if path.is_file():
                continue
            rng = np.random.default_rng([seed, k, size])
            arrays = {}
            for split, count in zip(SPLITS, n):
                labels = synthetic_labels(flag, count, rng)
                arrays[f"{split}_images"] = synthetic_images(flag, labels, size, rng)
                arrays[f"{split}_labels"] = labels
            partial = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez_compressed(partial, **arrays)  # type: ignore[arg-type]  # numpy stubs: **arrays
            os.replace(partial, path)
            written.append(path)
        (root / MARKER).write_text(json.dumps({"generator": "medmtl.data.medmnist_synthetic", "seed": seed}) + "\n")
    if written:
        log.info("Synthetic MedMNIST written: %s", ", ".join(p.name for p in written))
    return written


class SyntheticMedMNISTDataModule(MedMNISTDataModule):
    """:class:`MedMNISTDataModule` over generated files (written on first use; MD5 not checked)."""

    def __init__(self, root: str, flags: Sequence[str], size: int = 28, synthetic: dict | None = None, **kwargs):
        """``synthetic``: ``n_train``, ``n_val``, ``n_test`` (64, 32, 32) and ``seed`` (0) of the twin."""
        kwargs["verify_md5"] = False
        super().__init__(root, flags, size, **kwargs)
        synthetic = {"n_train": 64, "n_val": 32, "n_test": 32, "seed": 0, **dict(synthetic or {})}
        self.synthetic_sizes = (synthetic["n_train"], synthetic["n_val"], synthetic["n_test"])
        self.synthetic_seed = synthetic["seed"]

    def prepare_data(self) -> None:
        write_synthetic_medmnist(self.root, self.flags, self.size, self.synthetic_sizes, self.synthetic_seed)
        super().prepare_data()
