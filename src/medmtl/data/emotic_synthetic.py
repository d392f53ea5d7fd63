"""A synthetic EMOTIC in the official layout: JPEG scenes and an ``Annotations.mat`` with the
release's nested structs (written with scipy), read by the same loader as the real dataset.

Each image is a scene of one of four kinds (its background colour and texture) with one or two
persons drawn side by side as boxes. A person's labels depend on what is drawn, so that both encoders matter:

- categories: the body's colour (one of 8) gives two categories (k and k + 8), the scene kind
  (one of 4) one more (16 + kind), the scene's pattern (one of 4) one more (20 + pattern), and a
  striped body one more (24 or 25 by the stripe direction): every category occurs, and the body
  crop and the context are both needed;
- dimensions: valence = 1 + 9 x the body colour's brightness, arousal = 1 + 9 x the stripe count / 6,
  dominance = 1 + 9 x the body's share of the image height.

Like the release, the training split has one annotator per person; validation and test persons
have three whose categories and dimensions scatter around the truth, and the truth is stored as
``combined_categories`` / ``combined_continuous``. Images go to
``emotic/<database>/images/<name>.jpg`` for the four databases of the release.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medmtl.data.emotic import EmoticDataModule
from medmtl.data.emotic_layout import CATEGORIES, MAT_FILE, SPLITS
from medmtl.data.synthetic import write_once

log = logging.getLogger(__name__)

MARKER = ".synthetic_emotic.json"
DATABASES = ("mscoco", "ade20k", "emodb_small", "framesdb")
BODY_COLOURS = np.array(
    [
        [220, 40, 40],
        [40, 180, 60],
        [40, 70, 220],
        [230, 200, 40],
        [160, 60, 200],
        [40, 200, 210],
        [240, 130, 30],
        [120, 120, 120],
    ],
    dtype=np.float64,
)
SCENE_COLOURS = np.array([[90, 120, 160], [150, 110, 80], [70, 130, 70], [170, 170, 180]], dtype=np.float64)


def _struct_array(records: list[dict]) -> np.ndarray:
    """A 1 x N MATLAB struct array (savemat writes a structured object array as one)."""
    fields = list(records[0])
    array = np.empty((1, len(records)), dtype=[(name, object) for name in fields])
    for i, record in enumerate(records):
        for name in fields:
            array[0, i][name] = record[name]
    return array


def _cell(strings: list[str]) -> np.ndarray:
    cell = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        cell[0, i] = s
    return cell


def person_truth(
    colour: int, kind: int, pattern: int, stripes: int, horizontal: bool, height_share: float
) -> tuple[list[str], list[float]]:
    """The categories and (valence, arousal, dominance) of a drawn person (module docstring)."""
    names = {CATEGORIES[colour], CATEGORIES[colour + 8], CATEGORIES[16 + kind], CATEGORIES[20 + pattern]}
    if stripes:
        names.add(CATEGORIES[24 if horizontal else 25])
    brightness = BODY_COLOURS[colour].mean() / 255.0
    dimensions = [1 + 9 * brightness, 1 + 9 * stripes / 6, 1 + 9 * height_share]
    return sorted(names, key=CATEGORIES.index), [round(float(v), 3) for v in dimensions]


def _scene(rng: np.random.Generator, height: int, width: int, kind: int, pattern: int) -> np.ndarray:
    """The scene's colour (its kind) with a wave pattern of one of four periods."""
    v, u = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3))
    image[:] = SCENE_COLOURS[kind]
    period = (3.0, 6.0, 12.0, 24.0)[pattern]
    waves = (np.sin(u / period) + np.cos(v / period)) * 22
    image += waves[..., None] + rng.normal(0, 6, image.shape)
    return image


def _draw_person(
    image: np.ndarray, rng: np.random.Generator, box: list[int], colour: int, stripes: int, horizontal: bool
) -> None:
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = BODY_COLOURS[colour]
    if stripes:
        extent = (y2 - y1) if horizontal else (x2 - x1)
        for k in range(stripes):
            start = int(extent * (2 * k + 0.7) / (2 * stripes))  # thin stripes: 15 % of the body
            stop = max(start + 1, int(extent * (2 * k + 1.0) / (2 * stripes)))
            if horizontal:
                image[y1 + start : y1 + stop, x1:x2] = 255 - BODY_COLOURS[colour]
            else:
                image[y1:y2, x1 + start : x1 + stop] = 255 - BODY_COLOURS[colour]
    head = max(2, (x2 - x1) // 3)
    cx = (x1 + x2) // 2
    image[max(0, y1 - head) : y1, max(0, cx - head // 2) : cx + head // 2] = (230, 190, 160)


def _annotators(rng: np.random.Generator, names: list[str], dimensions: list[float], count: int) -> tuple[list[dict], list[dict]]:
    categories, continuous = [], []
    for _ in range(count):
        chosen = [n for n in names if rng.random() > 0.2] or names[:1]
        if rng.random() < 0.3:
            chosen.append(CATEGORIES[int(rng.integers(len(CATEGORIES)))])
        categories.append({"worker_id": "SYNTHETIC", "categories": _cell(sorted(set(chosen), key=CATEGORIES.index))})
        noisy = np.clip(np.asarray(dimensions) + rng.normal(0, 0.7, 3), 1, 10).round(0)
        continuous.append({"worker_id": "SYNTHETIC", "valence": noisy[0], "arousal": noisy[1], "dominance": noisy[2]})
    return categories, continuous


def _image_entry(rng: np.random.Generator, target: Path, split: str, index: int, size: tuple[int, int]) -> dict:
    height, width = size
    kind, pattern = int(rng.integers(4)), int(rng.integers(4))
    database = DATABASES[index % len(DATABASES)]
    image = _scene(rng, height, width, kind, pattern)
    persons = []
    count = int(rng.integers(1, 3))
    for slot in range(count):  # persons side by side, never overlapping (each is seen whole)
        left, right = slot * width // count, (slot + 1) * width // count
        w, h = int(rng.integers(width // 6, width // 3)), int(rng.integers(height // 3, int(height * 0.8)))
        x1, y1 = int(rng.integers(left, right - w)), int(rng.integers(max(1, height // 8), height - h + 1))
        colour, stripes, horizontal = int(rng.integers(8)), int(rng.integers(0, 7)), bool(rng.random() < 0.5)
        _draw_person(image, rng, [x1, y1, x1 + w, y1 + h], colour, stripes, horizontal)
        names, dimensions = person_truth(colour, kind, pattern, stripes, horizontal, h / height)
        person: dict[str, object] = {"body_bbox": np.array([[x1, y1, x1 + w, y1 + h]], dtype=np.float64)}
        if split == "train":
            person |= {
                "annotations_categories": {"worker_id": "SYNTHETIC", "categories": _cell(names)},
                "annotations_continuous": {
                    "worker_id": "SYNTHETIC",
                    "valence": dimensions[0],
                    "arousal": dimensions[1],
                    "dominance": dimensions[2],
                },
            }
        else:
            categories, continuous = _annotators(rng, names, dimensions, 3)
            person |= {
                "annotations_categories": _struct_array(categories),
                "annotations_continuous": _struct_array(continuous),
                "combined_categories": _cell(names),
                "combined_continuous": {"valence": dimensions[0], "arousal": dimensions[1], "dominance": dimensions[2]},
            }
        person |= {"gender": "Female" if rng.random() < 0.5 else "Male", "age": "Adult"}
        persons.append(person)
    name = f"{split}_{index:05d}.jpg"
    folder = f"{database}/images"
    path = target / "emotic" / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=92)
    return {
        "filename": name,
        "folder": folder,
        "image_size": {"n_col": width, "n_row": height},
        "original_database": {"name": database},
        "person": _struct_array(persons),
    }


def write_synthetic_emotic(
    root: str | Path, n_train: int = 48, n_val: int = 12, n_test: int = 24, size: tuple[int, int] = (96, 128), seed: int = 0
) -> Path:
    """Write the twin under ``root`` once (atomically: :func:`medmtl.data.synthetic.write_once`)."""
    from scipy.io import savemat

    spec = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "size": list(size), "seed": seed}

    def write(target: Path) -> None:
        rng = np.random.default_rng(seed)
        structs = {
            split: _struct_array([_image_entry(rng, target, split, i, (int(size[0]), int(size[1]))) for i in range(count)])
            for split, count in zip(SPLITS, (n_train, n_val, n_test))
        }
        (target / MAT_FILE).parent.mkdir(parents=True, exist_ok=True)
        savemat(target / MAT_FILE, structs)
        log.info("Synthetic EMOTIC written: %d / %d / %d images of %dx%d.", n_train, n_val, n_test, size[1], size[0])

    return write_once(root, MARKER, "medmtl.data.emotic_synthetic", spec, write)


class SyntheticEmoticDataModule(EmoticDataModule):
    """:class:`EmoticDataModule` over a generated twin in the official layout (written on first use)."""

    def __init__(self, root: str, synthetic: dict | None = None, **kwargs):
        kwargs.setdefault("layout", "mat")
        super().__init__(root, **kwargs)
        self.synthetic: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(synthetic or {}).items()}

    def prepare_data(self) -> None:
        write_synthetic_emotic(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        super().setup(stage)
