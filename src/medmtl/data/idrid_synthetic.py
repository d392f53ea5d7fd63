"""A synthetic IDRiD in the official layout, quirks included, read by the same loader.

Segmentation images ``IDRiD_NN.jpg`` (fundus-like: a disc, vessels, red dots for haemorrhages and
microaneurysms, yellow blobs for exudates) with their masks as 1-bit palette TIFFs, some lesion
masks deliberately absent (soft exudates most often, as in IDRiD); grading images ``IDRiD_NNN.jpg``
whose lesion load follows the retinopathy grade; grading CSVs with CRLF line endings, trailing
empty columns and the ``Risk of macular edema `` header with its trailing space; the OD-centre
mark-up CSV. Sizes are small by default (a few hundred pixels) so that tests stay fast.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from medmtl.data.idrid import IdridDataModule
from medmtl.data.idrid_layout import (
    GRADING,
    GRADING_CSV,
    LESION_SUFFIX,
    LESIONS,
    LOCALISATION,
    LOCALISATION_CSV,
    SEGMENTATION,
    SPLIT_FOLDERS,
)
from medmtl.data.synthetic import write_once

log = logging.getLogger(__name__)
MARKER = ".synthetic_idrid.json"
MASK_SKIP_PROBABILITY = {"ma": 0.1, "he": 0.05, "ex": 0.1, "se": 0.5, "od": 0.0}


def _fundus(rng: np.random.Generator, size: tuple[int, int], grade: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An RGB image (uint8) and its five lesion masks (uint8 {0, 1}); more lesions at higher grades."""
    height, width = size
    image = np.zeros((height, width, 3), np.uint8)
    centre = (width // 2, height // 2)
    cv2.ellipse(image, centre, (int(width * 0.45), int(height * 0.47)), 0, 0, 360, (40, 70, 170), -1)  # BGR
    masks = {lesion: np.zeros((height, width), np.uint8) for lesion in LESIONS}
    disc = (int(width * rng.uniform(0.6, 0.75)), int(height * rng.uniform(0.4, 0.6)))
    radius = int(min(height, width) * 0.08)
    cv2.circle(image, disc, radius, (150, 210, 240), -1)
    cv2.circle(masks["od"], disc, radius, 1, -1)
    for _ in range(6):
        end = (int(rng.uniform(0.1, 0.9) * width), int(rng.uniform(0.1, 0.9) * height))
        cv2.line(image, disc, end, (30, 30, 120), max(1, radius // 6))
    counts = {"ma": 2 * grade, "he": grade, "ex": grade, "se": max(0, grade - 2)}
    style = {
        "ma": ((20, 20, 140), 0.008),
        "he": ((10, 10, 110), 0.025),
        "ex": ((120, 230, 240), 0.015),
        "se": ((200, 220, 230), 0.03),
    }
    for lesion, count in counts.items():
        colour, scale = style[lesion]
        for _ in range(count):
            point = (int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.2, 0.8) * height))
            r = max(1, int(min(height, width) * scale))
            cv2.circle(image, point, r, colour, -1)
            cv2.circle(masks[lesion], point, r, 1, -1)
    noise = rng.normal(0, 6, image.shape)
    image = np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), masks


def _save_mask(mask: np.ndarray, path: Path) -> None:
    """A 1-bit palette TIFF like IDRiD's (``np.array(Image.open(p))`` gives {0, 1})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.save(path)


def _write_csv(path: Path, header: list[str], rows: Sequence[Sequence[object]], trailing_columns: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pad = "," * trailing_columns
    lines = (
        [",".join(header) + pad]
        + [",".join(str(v) for v in row) + pad for row in rows]
        + ["," * (len(header) + trailing_columns - 1)]
    )
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())


def write_synthetic_idrid(
    root: str | Path,
    n_segmentation: tuple[int, int] = (12, 6),
    n_grading: tuple[int, int] = (12, 6),
    size: tuple[int, int] = (192, 288),
    seed: int = 0,
) -> Path:
    """Write the layout under ``root`` (once, atomically: :func:`medmtl.data.synthetic.write_once`)."""
    spec = {"n_segmentation": list(n_segmentation), "n_grading": list(n_grading), "size": list(size), "seed": seed}

    def write(target: Path) -> None:
        rng = np.random.default_rng(seed)
        seg_number, grade_number = 1, 1
        for split, n_seg, n_grade in zip(SPLIT_FOLDERS, n_segmentation, n_grading):
            folder = SPLIT_FOLDERS[split]
            od_rows = []
            for _ in range(n_seg):
                name = f"IDRiD_{seg_number:02d}"
                seg_number += 1
                image, masks = _fundus(rng, size, grade=int(rng.integers(1, 5)))
                path = target / SEGMENTATION / "1. Original Images" / folder / f"{name}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path, quality=92)
                for lesion, mask in masks.items():
                    if rng.random() >= MASK_SKIP_PROBABILITY[lesion] and (lesion == "od" or mask.any()):
                        _save_mask(
                            mask,
                            target
                            / SEGMENTATION
                            / "2. All Segmentation Groundtruths"
                            / folder
                            / LESIONS[lesion]
                            / f"{name}_{LESION_SUFFIX[lesion]}.tif",
                        )
                ys, xs = np.nonzero(masks["od"])
                od_rows.append([name, f"{xs.mean():.0f}", f"{ys.mean():.0f}"])
            grade_rows: list[list[object]] = []
            for _ in range(n_grade):
                name = f"IDRiD_{grade_number:03d}"
                grade_number += 1
                grade = int(rng.integers(0, 5))
                edema = min(2, max(0, grade - 2 + int(rng.integers(-1, 2))))
                image, _ = _fundus(rng, size, grade)
                path = target / GRADING / "1. Original Images" / folder / f"{name}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path, quality=92)
                grade_rows.append([name, grade, edema])
            _write_csv(
                target / GRADING / "2. Groundtruths" / GRADING_CSV[split],
                ["Image name", "Retinopathy grade", "Risk of macular edema "],
                grade_rows,
            )
            _write_csv(
                target / LOCALISATION / LOCALISATION_CSV["od_xy"][split], ["Image No", "X- Coordinate", "Y - Coordinate"], od_rows
            )

    return write_once(root, MARKER, "medmtl.data.idrid_synthetic", spec, write)


class SyntheticIdridDataModule(IdridDataModule):
    """:class:`IdridDataModule` over a generated IDRiD (written on first use)."""

    def __init__(self, root: str, synthetic: dict | None = None, **kwargs):
        super().__init__(root, **kwargs)
        self.synthetic = dict(synthetic or {})

    def _scan_splits(self):
        options = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in self.synthetic.items()}
        write_synthetic_idrid(self.root, **options)
        return super()._scan_splits()
