"""The official IDRiD layout (docs/datasets.md): segmentation images with up to five lesion masks, the
disease-grading labels, the optic-disc and fovea localisation mark-ups.

Segmentation and grading are different image sets (``IDRiD_NN`` vs ``IDRiD_NNN``): each
:class:`IdridSample` carries what its image has, ``None`` elsewhere. The CSVs are read as the
challenge ships them: CRLF line endings, trailing empty columns, blank rows, header names with
stray spaces (``Risk of macular edema `` is matched after stripping). Every value is checked
where it is read: an empty or non-numeric cell, a grade outside its range or an image listed
twice is one error naming the file, the line and the column. The grading CSV of a run with
grading tasks must exist, and a grading row whose image is absent is an error unless
``skip_bad_samples`` (then each one is logged and counted); a missing lesion mask is ``None``
(partial labels: what it means for the loss is the datamodule's choice).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from medmtl.data.errors import DatasetError

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "a. Training Set", "test": "b. Testing Set"}
LESIONS = {
    "ma": "1. Microaneurysms",
    "he": "2. Haemorrhages",
    "ex": "3. Hard Exudates",
    "se": "4. Soft Exudates",
    "od": "5. Optic Disc",
}
LESION_SUFFIX = {"ma": "MA", "he": "HE", "ex": "EX", "se": "SE", "od": "OD"}
SEGMENTATION = Path("A. Segmentation")
GRADING = Path("B. Disease Grading")
GRADING_CSV = {"train": "a. IDRiD_Disease Grading_Training Labels.csv", "test": "b. IDRiD_Disease Grading_Testing Labels.csv"}
LOCALISATION = Path("C. Localization") / "2. Groundtruths"
LOCALISATION_CSV = {
    "od_xy": {
        "train": "1. Optic Disc Center Location/a. IDRiD_OD_Center_Training Set_Markups.csv",
        "test": "1. Optic Disc Center Location/b. IDRiD_OD_Center_Testing Set_Markups.csv",
    },
    "fovea_xy": {
        "train": "2. Fovea Center Location/IDRiD_Fovea_Center_Training Set_Markups.csv",
        "test": "2. Fovea Center Location/IDRiD_Fovea_Center_Testing Set_Markups.csv",
    },
}


@dataclass
class IdridSample:
    name: str  # IDRiD_NN (segmentation) or IDRiD_NNN (grading)
    split: str  # train | test
    image: Path
    masks: dict[str, Path | None] = field(default_factory=dict)  # lesion -> file (segmentation images)
    retinopathy: int | None = None  # 0-4 (grading images)
    edema: int | None = None  # 0-2
    od_xy: tuple[float, float] | None = None
    fovea_xy: tuple[float, float] | None = None
    position: int = -1  # place in scan_idrid(root, split): one id per image whatever the tasks

    @property
    def is_segmentation(self) -> bool:
        return bool(self.masks)


def read_numbered_table(path: Path) -> list[tuple[int, dict[str, str]]]:
    """Rows of an IDRiD CSV as ``(line number, {stripped header: stripped value})``, without empty
    columns and blank rows (the header is line 1)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"Cannot read {path} as a CSV file ({error}).") from None
    if not rows:
        raise DatasetError(f"{path} is empty.")
    header = [h.strip() for h in rows[0]]
    kept = [i for i, h in enumerate(header) if h]
    table = []
    for number, row in enumerate(rows[1:], start=2):
        values = {header[i]: row[i].strip() if i < len(row) else "" for i in kept}
        if any(values.values()):
            table.append((number, values))
    return table


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of an IDRiD CSV as ``{stripped header: stripped value}`` (see :func:`read_numbered_table`)."""
    return [values for _, values in read_numbered_table(path)]


def _column(table: list[tuple[int, dict[str, str]]], path: Path, *candidates: str) -> str:
    """The first candidate column (compared without spaces and case) present in ``table``."""
    if not table:
        raise DatasetError(f"{path} has no rows.")
    normalised = {k.replace(" ", "").lower(): k for k in table[0][1]}
    for candidate in candidates:
        key = normalised.get(candidate.replace(" ", "").lower())
        if key is not None:
            return key
    raise DatasetError(f"{path} has none of the columns {candidates}; it has {list(table[0][1])}.")


def _cell(path: Path, number: int, column: str, text: str, parse, allowed: range | None = None):
    """One value, parsed, or one error naming the file, the line and the column."""
    where = f"{path}, line {number}, column {column!r}"
    if not text:
        raise DatasetError(f"{where}: the value is empty.")
    try:
        value = parse(text)
    except ValueError:
        raise DatasetError(f"{where}: {text!r} is not {'an integer' if parse is int else 'a number'}.") from None
    if parse is float and not math.isfinite(value):
        raise DatasetError(f"{where}: {text!r} is not a finite number.")
    if allowed is not None and value not in allowed:
        raise DatasetError(f"{where}: {value} is outside {allowed.start}-{allowed.stop - 1}.")
    return value


def _names(table: list[tuple[int, dict[str, str]]], path: Path, column: str) -> list[str]:
    names = [_cell(path, number, column, values[column], str) for number, values in table]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DatasetError(f"{path} lists the images {duplicated[:5]} more than once.")
    return names


def read_grading(path: Path) -> dict[str, tuple[int, int]]:
    """``{image name: (retinopathy grade 0-4, macular edema risk 0-2)}``, every value checked."""
    table = read_numbered_table(path)
    if not table:
        return {}
    name = _column(table, path, "Image name")
    grade = _column(table, path, "Retinopathy grade")
    edema = _column(table, path, "Risk of macular edema")
    names = _names(table, path, name)
    return {
        image: (
            _cell(path, number, grade, values[grade], int, range(5)),
            _cell(path, number, edema, values[edema], int, range(3)),
        )
        for image, (number, values) in zip(names, table)
    }


def read_points(path: Path) -> dict[str, tuple[float, float]]:
    """``{image name: (x, y)}`` from a localisation mark-up CSV."""
    table = read_numbered_table(path)
    if not table:
        return {}
    name = _column(table, path, "Image No")
    x = _column(table, path, "X- Coordinate", "X-Coordinate")
    y = _column(table, path, "Y - Coordinate", "Y-Coordinate")
    names = _names(table, path, name)
    return {
        image: (_cell(path, number, x, values[x], float), _cell(path, number, y, values[y], float))
        for image, (number, values) in zip(names, table)
    }


def _segmentation_samples(root: Path, split: str) -> list[IdridSample]:
    folder = root / SEGMENTATION / "1. Original Images" / SPLIT_FOLDERS[split]
    truth = root / SEGMENTATION / "2. All Segmentation Groundtruths" / SPLIT_FOLDERS[split]
    samples = []
    for image in sorted(folder.glob("IDRiD_*.jpg")) if folder.is_dir() else []:
        masks = {}
        for lesion, lesion_folder in LESIONS.items():
            path = truth / lesion_folder / f"{image.stem}_{LESION_SUFFIX[lesion]}.tif"
            masks[lesion] = path if path.is_file() else None
        samples.append(IdridSample(image.stem, split, image, masks))
    return samples


def _grading_samples(root: Path, split: str, skip_bad_samples: bool) -> list[IdridSample]:
    """The grading images of ``split`` with their labels. The CSV must exist (the caller asks only
    when a grading task is on); a row whose image is absent is an error, or with
    ``skip_bad_samples`` a logged, counted omission."""
    csv_path = root / GRADING / "2. Groundtruths" / GRADING_CSV[split]
    if not csv_path.is_file():
        raise DatasetError(
            f"IDRiD grading labels missing: expected {csv_path}; set data.grades=[] to train without the grading tasks."
        )
    folder = root / GRADING / "1. Original Images" / SPLIT_FOLDERS[split]
    samples, absent = [], []
    for name, (grade, edema) in sorted(read_grading(csv_path).items()):
        image = folder / f"{name}.jpg"
        if image.is_file():
            samples.append(IdridSample(name, split, image, retinopathy=grade, edema=edema))
        else:
            absent.append(image)
    if absent and not skip_bad_samples:
        raise DatasetError(
            f"{csv_path} grades {len(absent)} images that are not in {folder} (first: {absent[0].name}); add them, set "
            "data.grades=[] to train without the grading tasks, or data.skip_bad_samples=true to leave those rows out."
        )
    for image in absent:
        log.warning("IDRiD %s grading: %s is absent; its row is left out (data.skip_bad_samples).", split, image)
    if absent:
        log.warning("IDRiD %s grading: %d of %d labelled images left out.", split, len(absent), len(absent) + len(samples))
    return samples


def _attach_points(root: Path, split: str, samples: list[IdridSample]) -> None:
    for attribute, files in LOCALISATION_CSV.items():
        path = root / LOCALISATION / files[split]
        if path.is_file():
            points = read_points(path)
            for sample in samples:
                if sample.name in points:
                    setattr(sample, attribute, points[sample.name])


def scan_idrid(
    root: str | Path, split: str, lesions: bool = True, grades: bool = True, skip_bad_samples: bool = False
) -> list[IdridSample]:
    """Every segmentation image (when ``lesions``) and grading image (when ``grades``) of ``split``
    with the labels it has. A sample's ``position`` is its place among all the split's images,
    whichever families are read, so runs of different task sets share image ids."""
    root = Path(root)
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {list(SPLIT_FOLDERS)}, got {split!r}.")
    if not root.is_dir():
        raise DatasetError(
            f"IDRiD root folder not found: {root}. Set data.root to the folder holding '{SEGMENTATION}' and '{GRADING}'."
        )
    segmentation = _segmentation_samples(root, split)
    samples = segmentation + (_grading_samples(root, split, skip_bad_samples) if grades else [])
    for position, sample in enumerate(samples):
        sample.position = position
    _attach_points(root, split, samples)
    return [s for s in samples if lesions or not s.is_segmentation]
