"""A synthetic REFUGE written in the official layout, read by the real loader.

Each image is a fundus-like picture: a dark surround, an orange retina with a radial falloff and
texture, a bright optic disc with a brighter cup inside, vessels leaving the disc, a darker fovea
about 2.5 disc diameters temporal to the disc. Masks are 8-bit BMP with 0 = cup, 128 = rim,
255 = background; fovea and labels go to the three xlsx files with the official column names.

The glaucoma label depends on the vertical cup-to-disc ratio plus noise,
P(glaucoma | vCDR) = sigmoid((vCDR - threshold) / noise), so the segmentation tasks carry real
information about the classification task (as in the real data, where vCDR is a clinical marker).

Generation is seeded and idempotent: ``<root>/.synthetic_refuge.json`` records the parameters;
a second call with the same parameters does nothing, with different ones it refuses
(:mod:`medmtl.data.synthetic`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medmtl.data import refuge_layout as layout
from medmtl.data.images import encode_refuge_mask
from medmtl.data.refuge import RefugeDataModule
from medmtl.data.synthetic import write_once

log = logging.getLogger(__name__)

MARKER = ".synthetic_refuge.json"


@dataclass(frozen=True)
class SyntheticRefugeSpec:
    """Parameters of the synthetic set (all recorded in the marker file)."""

    n_train: int = 120
    n_val: int = 80
    n_test: int = 60
    train_size: tuple[int, int] = (528, 512)  # (width, height): not square, like Training400
    eval_size: tuple[int, int] = (512, 512)
    vcdr_range: tuple[float, float] = (0.3, 0.8)
    glaucoma_threshold: float = 0.62
    label_noise: float = 0.04
    seed: int = 0


@dataclass(frozen=True)
class FundusGeometry:
    disc_xy: tuple[float, float]
    disc_axes: tuple[float, float]  # (horizontal, vertical) semi-axes
    cup_xy: tuple[float, float]
    cup_axes: tuple[float, float]
    fovea_xy: tuple[float, float]


def sample_geometry(rng: np.random.Generator, width: int, height: int, vcdr: float) -> FundusGeometry:
    side = rng.choice([-1.0, 1.0])  # left or right eye
    disc_xy = (width / 2 + side * width * rng.uniform(0.16, 0.22), height / 2 + height * rng.uniform(-0.05, 0.05))
    disc_ry = height * rng.uniform(0.075, 0.095)
    disc_axes = (disc_ry * rng.uniform(0.85, 1.0), disc_ry)
    cup_ry = vcdr * disc_ry
    cup_axes = (min(cup_ry * rng.uniform(0.8, 1.0), disc_axes[0] * 0.95), cup_ry)
    room = disc_ry - cup_ry
    cup_xy = (disc_xy[0] + rng.uniform(-0.3, 0.3) * room, disc_xy[1] + rng.uniform(-0.3, 0.3) * room)
    distance = 2.5 * 2 * disc_ry
    fovea_xy = (disc_xy[0] - side * distance, disc_xy[1] + rng.uniform(0.0, 0.25) * disc_ry)
    return FundusGeometry(disc_xy, disc_axes, cup_xy, cup_axes, fovea_xy)


def _ellipse(canvas: np.ndarray, xy, axes, value) -> None:
    centre = (int(round(xy[0])), int(round(xy[1])))
    cv2.ellipse(canvas, centre, (int(round(axes[0])), int(round(axes[1]))), 0, 0, 360, value, thickness=-1)


def draw_mask(width: int, height: int, geometry: FundusGeometry) -> np.ndarray:
    od = np.zeros((height, width), np.uint8)
    oc = np.zeros((height, width), np.uint8)
    _ellipse(od, geometry.disc_xy, geometry.disc_axes, 1)
    _ellipse(oc, geometry.cup_xy, geometry.cup_axes, 1)
    return encode_refuge_mask(od, oc & od)


def _draw_vessels(rng: np.random.Generator, canvas: np.ndarray, geometry: FundusGeometry) -> None:
    x0, y0 = geometry.disc_xy
    toward_fovea = math.copysign(1.0, geometry.fovea_xy[0] - x0)
    for vertical in (-1.0, 1.0):
        for _ in range(3):
            points, angle = [(x0, y0)], math.atan2(vertical, toward_fovea * rng.uniform(0.2, 1.5))
            length = canvas.shape[0] * rng.uniform(0.04, 0.06)
            for _ in range(14):
                angle += rng.normal(0.0, 0.15) - 0.06 * vertical * toward_fovea
                x, y = points[-1]
                points.append((x + length * math.cos(angle), y + length * math.sin(angle)))
            thickness = max(1, int(canvas.shape[0] * rng.uniform(0.006, 0.012)))
            colour = tuple(float(c) for c in rng.uniform([100, 15, 15], [140, 35, 30]))
            cv2.polylines(canvas, [np.array(points, np.int32)], False, colour, thickness, cv2.LINE_AA)


def draw_fundus(rng: np.random.Generator, width: int, height: int, geometry: FundusGeometry) -> np.ndarray:
    """An RGB uint8 fundus-like image whose disc, cup and fovea follow ``geometry``."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = 0.47 * min(width, height)
    r = np.hypot(xs - width / 2, ys - height / 2) / radius
    base = np.array(rng.uniform([165, 65, 25], [200, 95, 45]), np.float32)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), height / 60)
    retina = base[None, None, :] * (1.0 - 0.35 * r[..., None] ** 2) + 40 * texture[..., None]
    canvas = np.ascontiguousarray(retina)
    _draw_vessels(rng, canvas, geometry)
    fx, fy = geometry.fovea_xy
    fovea_sigma = 1.2 * geometry.disc_axes[1]
    fovea = np.exp(-((xs - fx) ** 2 + (ys - fy) ** 2) / (2 * fovea_sigma**2))
    canvas *= (1.0 - 0.45 * fovea)[..., None]
    disc = np.zeros((height, width), np.float32)
    _ellipse(disc, geometry.disc_xy, geometry.disc_axes, 1.0)
    cup = np.zeros((height, width), np.float32)
    _ellipse(cup, geometry.cup_xy, geometry.cup_axes, 1.0)
    soft = max(1.0, geometry.disc_axes[1] / 12)
    disc_soft = np.asarray(cv2.GaussianBlur(disc, (0, 0), soft), np.float32)[..., None]
    cup_soft = np.asarray(cv2.GaussianBlur(cup * disc_soft[..., 0], (0, 0), soft), np.float32)[..., None]
    canvas = canvas * (1 - disc_soft) + np.array([235, 185, 110], np.float32) * disc_soft
    canvas = canvas * (1 - 0.8 * cup_soft) + 0.8 * cup_soft * np.array([252, 236, 195], np.float32)
    canvas += rng.normal(0, 4, canvas.shape)
    canvas *= (r < 1.0)[..., None]
    return np.clip(canvas, 0, 255).astype(np.uint8)


def draw_sample(rng: np.random.Generator, width: int, height: int, spec: SyntheticRefugeSpec):
    """(image RGB, mask, fovea_xy, label, vcdr) of one synthetic eye."""
    vcdr = rng.uniform(*spec.vcdr_range)
    p_glaucoma = 1.0 / (1.0 + math.exp(-(vcdr - spec.glaucoma_threshold) / spec.label_noise))
    label = int(rng.random() < p_glaucoma)
    geometry = sample_geometry(rng, width, height, vcdr)
    return draw_fundus(rng, width, height, geometry), draw_mask(width, height, geometry), geometry.fovea_xy, label, vcdr


def _write_pair(image_path: Path, mask_path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    cv2.imwrite(str(mask_path), mask)


def _write_xlsx(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_excel(path, index=False, engine="openpyxl")


def _write_train(root: Path, rng: np.random.Generator, spec: SyntheticRefugeSpec) -> None:
    rows, counters = [], {0: 0, 1: 0}
    width, height = spec.train_size
    for i in range(spec.n_train):
        image, mask, (fx, fy), label, _ = draw_sample(rng, width, height, spec)
        counters[label] += 1
        stem = f"{'g' if label else 'n'}{counters[label]:04d}"
        class_dir = "Glaucoma" if label else "Non-Glaucoma"
        _write_pair(
            root / layout.TRAIN_IMAGES / class_dir / f"{stem}.jpg",
            root / layout.TRAIN_MASKS / class_dir / f"{stem}.bmp",
            image,
            mask,
        )
        rows.append({"ID": i + 1, "ImgName": f"{stem}.jpg", "Fovea_X": round(fx, 2), "Fovea_Y": round(fy, 2)})
    _write_xlsx(root / layout.TRAIN_XLSX, rows)


def _write_evaluation_split(root: Path, rng: np.random.Generator, spec: SyntheticRefugeSpec, split: str) -> None:
    """Validation400 (labels in the xlsx, flat masks) or Test400 (masks in G/ and N/ folders)."""
    count, prefix = (spec.n_val, "V") if split == "val" else (spec.n_test, "T")
    images, masks, xlsx = (
        (layout.VAL_IMAGES, layout.VAL_MASKS, layout.VAL_XLSX)
        if split == "val"
        else (layout.TEST_IMAGES, layout.TEST_MASKS, layout.TEST_XLSX)
    )
    rows = []
    width, height = spec.eval_size
    for i in range(count):
        image, mask, (fx, fy), label, _ = draw_sample(rng, width, height, spec)
        stem = f"{prefix}{i + 1:04d}"
        mask_dir = root / masks if split == "val" else root / masks / ("G" if label else "N")
        _write_pair(root / images / f"{stem}.jpg", mask_dir / f"{stem}.bmp", image, mask)
        row = {"ImgName": f"{stem}.jpg", "Fovea_X": round(fx, 2), "Fovea_Y": round(fy, 2)}
        rows.append(
            {"ImgName": row.pop("ImgName"), "Glaucoma Label": label, **row}
            if split == "val"
            else row | {"Label(Glaucoma=1)": label}
        )
    _write_xlsx(root / xlsx, rows)


def generate_synthetic_refuge(root: str | Path, spec: SyntheticRefugeSpec = SyntheticRefugeSpec()) -> Path:
    """Write the synthetic set under ``root`` unless it is there already with the same parameters
    (once, atomically, one writer at a time: :func:`medmtl.data.synthetic.write_once`)."""

    def write(folder: Path) -> None:
        log.info("Writing a synthetic REFUGE (%d/%d/%d images) for %s.", spec.n_train, spec.n_val, spec.n_test, root)
        rng = np.random.default_rng(spec.seed)
        _write_train(folder, rng, spec)
        _write_evaluation_split(folder, rng, spec, "val")
        _write_evaluation_split(folder, rng, spec, "test")

    return write_once(root, MARKER, "medmtl.data.refuge_synthetic", asdict(spec), write)


class SyntheticRefugeDataModule(RefugeDataModule):
    """The REFUGE DataModule over a generated set; generation happens once, in ``prepare_data``."""

    def __init__(self, root: str, synthetic: dict | None = None, **kwargs):
        super().__init__(root=root, **kwargs)
        options = dict(synthetic or {})
        for key in ("train_size", "eval_size", "vcdr_range"):
            if key in options:
                options[key] = tuple(options[key])
        self.spec = SyntheticRefugeSpec(**options)

    def prepare_data(self) -> None:
        generate_synthetic_refuge(self.root, self.spec)
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        generate_synthetic_refuge(self.root, self.spec)
        super().setup(stage)
