"""EMOTIC (Kosti et al. 2020) read as it is distributed, every annotated person checked.

Two forms are in common use:

``mat`` (the official release): ``emotic/<folder>/<filename>`` images (``folder`` such as
``mscoco/images``, ``ade20k/images``, ``emodb_small/images``, ``framesdb/images``) and
``Annotations/Annotations.mat`` holding the struct arrays ``train``, ``val`` and ``test``, one entry
per image: ``filename``, ``folder``, ``image_size`` (``n_col``, ``n_row``) and ``person``, a struct
array with, per person, ``body_bbox`` ``[x1 y1 x2 y2]`` (pixels), ``annotations_categories``
(``categories``: the category names one annotator chose) and ``annotations_continuous``
(``valence``, ``arousal``, ``dominance`` on 1-10). The training split has one annotator per
person. Validation and test persons have several, and the release adds their combination:
``combined_categories`` and ``combined_continuous``, which are read as the labels, as the dataset
defines them (where a copy lacks them: the union of the annotators' categories and the mean of
their dimensions).

``preprocessed`` (the widely used conversion of the Tandon-A/emotic code): ``emotic_pre/{train,val,
test}.csv`` (``Index, Folder, Filename, Image Size, BBox, Categorical_Labels, Continuous_Labels,
Gender, Age``) with ``{split}_context_arr.npy`` (N, 224, 224, 3), ``{split}_body_arr.npy``
(N, 128, 128, 3) uint8 crops, ``{split}_cat_arr.npy`` (N, 26) one-hot categories and
``{split}_cont_arr.npy`` (N, 3) dimensions.

The ``.mat`` file is converted once into the project's cache (``paths.cache_dir``, keyed on the
file's size and modification time): :class:`EmoticRecords`, one row per annotated person.
Refused in one sentence naming the split, image and person: a body box outside its image or
empty, an unknown category name, an empty category list, a dimension outside 1-10, a missing
image file (unless ``skip_bad_samples``, which leaves the person out, logged and counted). A box
that overshoots its image by a few pixels (the release has such boxes) is clipped to the image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmtl.data.errors import DatasetError

log = logging.getLogger(__name__)

CATEGORIES = (
    "Affection",
    "Anger",
    "Annoyance",
    "Anticipation",
    "Aversion",
    "Confidence",
    "Disapproval",
    "Disconnection",
    "Disquietment",
    "Doubt/Confusion",
    "Embarrassment",
    "Engagement",
    "Esteem",
    "Excitement",
    "Fatigue",
    "Fear",
    "Happiness",
    "Pain",
    "Peace",
    "Pleasure",
    "Sadness",
    "Sensitivity",
    "Suffering",
    "Surprise",
    "Sympathy",
    "Yearning",
)
DIMENSIONS = ("valence", "arousal", "dominance")
SPLITS = ("train", "val", "test")
LAYOUTS = ("mat", "preprocessed")
MAT_FILE = Path("Annotations") / "Annotations.mat"
PREPROCESSED = Path("emotic_pre")


def category_task_name(category: str) -> str:
    """``Doubt/Confusion`` -> ``doubt_confusion``: the task name of one category (26-task setting)."""
    return category.lower().replace("/", "_")


@dataclass
class EmoticRecords:
    """One row per annotated person of a split: ``image`` (paths relative to the root), ``box``
    (N, 4) x1, y1, x2, y2 in pixels, ``categories`` (N, 26) in {0, 1}, ``dimensions`` (N, 3)."""

    image: np.ndarray
    box: np.ndarray
    categories: np.ndarray
    dimensions: np.ndarray

    def __len__(self) -> int:
        return len(self.image)

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        return {f"{split}/{k}": v for k, v in vars(self).items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], split: str) -> EmoticRecords:
        return cls(**{k: arrays[f"{split}/{k}"] for k in ("image", "box", "categories", "dimensions")})


def detect_layout(root: Path) -> str:
    if (root / MAT_FILE).is_file():
        return "mat"
    if (root / PREPROCESSED / "train.csv").is_file():
        return "preprocessed"
    raise DatasetError(
        f"No EMOTIC layout found under {root}: expected {MAT_FILE} (the official release) or "
        f"{PREPROCESSED}/train.csv (the preprocessed form). Set data.root, or use data=emotic_synthetic."
    )


def _many(value) -> list:
    """A MATLAB struct array or cell array as a list (loadmat squeezes one element to a scalar)."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def _field(entry, name: str, where: str):
    if not hasattr(entry, name):
        raise DatasetError(f"{where} has no field {name!r}.")
    return getattr(entry, name)


def _category_vector(names: list, where: str) -> np.ndarray:
    vector = np.zeros(len(CATEGORIES), dtype=np.uint8)
    for name in names:
        name = str(name).strip()
        if name not in CATEGORIES:
            raise DatasetError(f"{where}: unknown category {name!r}; the 26 are {', '.join(CATEGORIES)}.")
        vector[CATEGORIES.index(name)] = 1
    return vector


def _dimension_vector(continuous, where: str) -> np.ndarray:
    values = []
    for entry in _many(continuous):
        row = []
        for dimension in DIMENSIONS:
            raw = _field(entry, dimension, where)
            try:
                row.append(float(raw))
            except (TypeError, ValueError):
                row.append(np.nan)
        values.append(row)
    if not values:
        raise DatasetError(f"{where} has no continuous annotation.")
    mean = np.nanmean(np.asarray(values, dtype=np.float64), axis=0) if len(values) > 1 else np.asarray(values[0])
    if not np.all(np.isfinite(mean)) or mean.min() < 1 or mean.max() > 10:
        raise DatasetError(f"{where}: dimensions {np.round(mean, 3).tolist()} are not all within 1-10.")
    return mean.astype(np.float32)


def _person_labels(person, split: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    if split != "train" and hasattr(person, "combined_categories"):
        names = _many(person.combined_categories)
        continuous = _field(person, "combined_continuous", where)
    else:
        annotators = _many(_field(person, "annotations_categories", where))
        names = sorted({str(n) for a in annotators for n in _many(_field(a, "categories", where))})
        continuous = _field(person, "annotations_continuous", where)
    if not names:
        raise DatasetError(f"{where} has an empty category list.")
    return _category_vector(names, where), _dimension_vector(continuous, where)


def _checked_box(raw, width: int, height: int, where: str) -> tuple[np.ndarray, bool]:
    box = np.asarray(raw, dtype=np.float64).ravel()
    if box.size != 4 or not np.all(np.isfinite(box)):
        raise DatasetError(f"{where}: body_bbox {box.tolist()} is not four numbers [x1 y1 x2 y2].")
    clipped = np.array([max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)])
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        raise DatasetError(f"{where}: body_bbox {box.tolist()} lies outside its {width}x{height} image or is empty.")
    return clipped.astype(np.float32), not np.array_equal(clipped, box)


def read_mat(path: Path) -> dict[str, object]:
    """The ``train``, ``val`` and ``test`` struct arrays of ``Annotations.mat``."""
    from scipy.io import loadmat

    if path.is_file() and path.read_bytes()[:128].find(b"MATLAB 7.3") >= 0:
        raise DatasetError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; save it again with "
            "MATLAB's -v7 option (the release is v7)."
        )
    try:
        content = loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError) as error:
        raise DatasetError(f"Cannot read {path}: it is truncated or not a MATLAB file ({error}).") from None
    missing = [split for split in SPLITS if split not in content]
    if missing:
        raise DatasetError(
            f"{path} has no {missing} struct arrays; it holds {sorted(k for k in content if not k.startswith('__'))}."
        )
    return {split: content[split] for split in SPLITS}


def records_from_mat(root: Path, entries, split: str, skip_bad_samples: bool = False) -> EmoticRecords:
    """Every annotated person of one split of the ``.mat`` file, checked."""
    images, boxes, categories, dimensions = [], [], [], []
    clipped = skipped = 0
    for i, entry in enumerate(_many(entries)):
        filename, folder = (
            str(_field(entry, "filename", f"{split} image {i}")),
            str(_field(entry, "folder", f"{split} image {i}")),
        )
        relative = Path("emotic") / folder / filename
        where_image = f"{MAT_FILE} {split} image {i} ({relative})"
        size = _field(entry, "image_size", where_image)
        width, height = int(_field(size, "n_col", where_image)), int(_field(size, "n_row", where_image))
        if not (root / relative).is_file():
            if skip_bad_samples:
                log.warning("EMOTIC: %s is missing; its persons are left out (data.skip_bad_samples).", root / relative)
                skipped += len(_many(_field(entry, "person", where_image)))
                continue
            raise DatasetError(
                f"EMOTIC image missing: {root / relative} (listed in {where_image}); "
                "set data.skip_bad_samples=true to leave its persons out."
            )
        for j, person in enumerate(_many(_field(entry, "person", where_image))):
            where = f"{where_image}, person {j}"
            box, was_clipped = _checked_box(_field(person, "body_bbox", where), width, height, where)
            cats, dims = _person_labels(person, split, where)
            images.append(str(relative))
            boxes.append(box)
            categories.append(cats)
            dimensions.append(dims)
            clipped += was_clipped
    if clipped:
        log.info("EMOTIC %s: %d body boxes overshot their image and were clipped to it.", split, clipped)
    if skipped:
        log.warning("EMOTIC %s: %d persons left out (missing images).", split, skipped)
    return EmoticRecords(
        np.asarray(images, dtype=str),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(categories, dtype=np.uint8).reshape(-1, len(CATEGORIES)),
        np.asarray(dimensions, dtype=np.float32).reshape(-1, len(DIMENSIONS)),
    )


def read_preprocessed(root: Path, split: str) -> dict[str, np.ndarray]:
    """The preprocessed arrays of one split (memory-mapped), their row counts checked against the CSV."""
    folder = root / PREPROCESSED
    listing = folder / f"{split}.csv"
    if not listing.is_file():
        raise DatasetError(f"EMOTIC preprocessed file missing: {listing}.")
    rows = sum(1 for line in listing.read_text().splitlines()[1:] if line.strip())
    arrays = {}
    for key, shape in (("context", 4), ("body", 4), ("cat", 2), ("cont", 2)):
        path = folder / f"{split}_{key}_arr.npy"
        if not path.is_file():
            raise DatasetError(f"EMOTIC preprocessed file missing: {path}.")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DatasetError(f"Cannot read {path}: it is truncated or not a .npy array ({error}).") from None
        if array.ndim != shape or len(array) != rows:
            raise DatasetError(f"{path} has shape {array.shape}; expected {shape} axes and {rows} rows (as {listing}).")
        arrays[key] = array
    if arrays["cat"].shape[1] != len(CATEGORIES) or arrays["cont"].shape[1] != len(DIMENSIONS):
        raise DatasetError(
            f"{folder}: {split}_cat_arr.npy must have 26 columns and {split}_cont_arr.npy 3, found "
            f"{arrays['cat'].shape[1]} and {arrays['cont'].shape[1]}."
        )
    _check_preprocessed_values(arrays, folder, split)
    return arrays


def _check_preprocessed_values(arrays: dict[str, np.ndarray], folder: Path, split: str) -> None:
    """The values the ``.mat`` path would refuse, refused here too, naming the file and the first bad
    row: crops that are not uint8 RGB (a float array in [0, 1] would be divided by 255 again),
    categories other than 0 / 1 or a person with none, dimensions outside 1-10 or not finite."""
    for key in ("context", "body"):
        crops = arrays[key]
        if crops.dtype != np.uint8 or crops.shape[-1] != 3:
            raise DatasetError(
                f"{folder / f'{split}_{key}_arr.npy'} holds {crops.dtype} crops of shape {crops.shape[1:]}; the preprocessed "
                "form stores uint8 RGB crops (0-255), as the release does."
            )
    categories = np.asarray(arrays["cat"], dtype=np.float64)
    bad_value = ~np.isin(categories, (0.0, 1.0)).all(axis=1)
    no_category = categories.sum(axis=1) == 0
    for mask, what in ((bad_value, "category values other than 0 and 1"), (no_category, "no category")):
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            raise DatasetError(
                f"{folder / f'{split}_cat_arr.npy'} row {row} has {what} ({categories[row].tolist()}); every person "
                "has one or more of the 26 categories, one-hot."
            )
    dimensions = np.asarray(arrays["cont"], dtype=np.float64)
    bad = ~(np.isfinite(dimensions) & (dimensions >= 1) & (dimensions <= 10)).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{folder / f'{split}_cont_arr.npy'} row {row} has dimensions {dimensions[row].tolist()}; valence, arousal and "
            "dominance are finite and within 1-10."
        )
