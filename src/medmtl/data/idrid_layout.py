"""The official IDRiD layout (DATASETS.md): segmentation images with up to five lesion masks, the
disease-grading labels, the optic-disc and fovea localisation mark-ups.

Segmentation and grading are different image sets (``IDRiD_NN`` vs ``IDRiD_NNN``): each
:class:`IdridSample` carries what its image has, ``None`` elsewhere. The CSVs are read as the
challenge ships them: CRLF line endings, trailing empty columns, blank rows, header names with
stray spaces (``Risk of macular edema `` is matched after stripping). A grading row whose image
file is absent is counted and left out (the sample data holds the CSVs without the images); a
missing lesion mask is ``None`` (what it means for the loss is the datamodule's choice).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from medmtl.data.errors import DatasetError

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "a. Training Set", "test": "b. Testing Set"}
LESIONS = {"ma": "1. Microaneurysms", "he": "2. Haemorrhages", "ex": "3. Hard Exudates",
           "se": "4. Soft Exudates", "od": "5. Optic Disc"}
LESION_SUFFIX = {"ma": "MA", "he": "HE", "ex": "EX", "se": "SE", "od": "OD"}
SEGMENTATION = Path("A. Segmentation")
GRADING = Path("B. Disease Grading")
GRADING_CSV = {"train": "a. IDRiD_Disease Grading_Training Labels.csv", "test": "b. IDRiD_Disease Grading_Testing Labels.csv"}
LOCALISATION = Path("C. Localization") / "2. Groundtruths"
LOCALISATION_CSV = {
    "od_xy": {"train": "1. Optic Disc Center Location/a. IDRiD_OD_Center_Training Set_Markups.csv",
              "test": "1. Optic Disc Center Location/b. IDRiD_OD_Center_Testing Set_Markups.csv"},
    "fovea_xy": {"train": "2. Fovea Center Location/IDRiD_Fovea_Center_Training Set_Markups.csv",
                 "test": "2. Fovea Center Location/IDRiD_Fovea_Center_Testing Set_Markups.csv"},
}


@dataclass
class IdridSample:
    name: str                      # IDRiD_NN (segmentation) or IDRiD_NNN (grading)
    split: str                     # train | test
    image: Path
    masks: dict[str, Path | None] = field(default_factory=dict)  # lesion -> file (segmentation images)
    retinopathy: int | None = None  # 0-4 (grading images)
    edema: int | None = None        # 0-2
    od_xy: tuple[float, float] | None = None
    fovea_xy: tuple[float, float] | None = None
    position: int = -1             # place in scan_idrid(root, split): one id per image whatever the tasks

    @property
    def is_segmentation(self) -> bool:
        return bool(self.masks)


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of an IDRiD CSV as ``{stripped header: stripped value}``, without empty columns and
    blank rows."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DatasetError(f"{path} is empty.")
    header = [h.strip() for h in rows[0]]
    kept = [i for i, h in enumerate(header) if h]
    table = []
    for row in rows[1:]:
        values = {header[i]: row[i].strip() for i in kept if i < len(row)}
        if any(values.values()):
            table.append(values)
    return table


def _column(table: list[dict[str, str]], path: Path, *candidates: str) -> str:
    """The first candidate column (compared without spaces and case) present in ``table``."""
    if not table:
        raise DatasetError(f"{path} has no rows.")
    normalised = {k.replace(" ", "").lower(): k for k in table[0]}
    for candidate in candidates:
        key = normalised.get(candidate.replace(" ", "").lower())
        if key is not None:
            return key
    raise DatasetError(f"{path} has none of the columns {candidates}; it has {list(table[0])}.")


def read_grading(path: Path) -> dict[str, tuple[int, int]]:
    """``{image name: (retinopathy grade, macular edema risk)}``."""
    table = read_table(path)
    name = _column(table, path, "Image name")
    grade = _column(table, path, "Retinopathy grade")
    edema = _column(table, path, "Risk of macular edema")
    labels = {}
    for row in table:
        try:
            labels[row[name]] = (int(row[grade]), int(row[edema]))
        except ValueError:
            raise DatasetError(f"{path}: row {row} has a non-integer grade.") from None
    return labels


def read_points(path: Path) -> dict[str, tuple[float, float]]:
    """``{image name: (x, y)}`` from a localisation mark-up CSV."""
    table = read_table(path)
    name = _column(table, path, "Image No")
    x = _column(table, path, "X- Coordinate", "X-Coordinate")
    y = _column(table, path, "Y - Coordinate", "Y-Coordinate")
    return {row[name]: (float(row[x]), float(row[y])) for row in table}


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


def _grading_samples(root: Path, split: str) -> list[IdridSample]:
    csv_path = root / GRADING / "2. Groundtruths" / GRADING_CSV[split]
    if not csv_path.is_file():
        return []
    folder = root / GRADING / "1. Original Images" / SPLIT_FOLDERS[split]
    samples, without_image = [], 0
    for name, (grade, edema) in sorted(read_grading(csv_path).items()):
        image = folder / f"{name}.jpg"
        if image.is_file():
            samples.append(IdridSample(name, split, image, retinopathy=grade, edema=edema))
        else:
            without_image += 1
    if without_image:
        log.warning("IDRiD %s grading: %d labelled images are not in %s and are left out.", split, without_image, folder)
    return samples


def _attach_points(root: Path, split: str, samples: list[IdridSample]) -> None:
    for attribute, files in LOCALISATION_CSV.items():
        path = root / LOCALISATION / files[split]
        if path.is_file():
            points = read_points(path)
            for sample in samples:
                if sample.name in points:
                    setattr(sample, attribute, points[sample.name])


def scan_idrid(root: str | Path, split: str) -> list[IdridSample]:
    """Every segmentation and grading image of ``split`` with the labels it has."""
    root = Path(root)
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {list(SPLIT_FOLDERS)}, got {split!r}.")
    if not root.is_dir():
        raise DatasetError(f"IDRiD root folder not found: {root}. Set data.root to the folder holding "
                           f"'{SEGMENTATION}' and '{GRADING}'.")
    samples = _segmentation_samples(root, split) + _grading_samples(root, split)
    _attach_points(root, split, samples)
    for position, sample in enumerate(samples):
        sample.position = position
    return samples
