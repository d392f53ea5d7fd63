"""The official REFUGE layout (docs/datasets.md), read as the challenge ships it.

``scan_refuge(root)`` returns one :class:`RefugeSample` per image of the three official splits and
checks the layout first: a missing folder, image, mask or spreadsheet column is one
:class:`DatasetError` naming the file and what was expected.

Labels come from the class folders (training images, test masks) or from the spreadsheets
(validation); where both exist they must agree. Spreadsheet values are checked where they are
read: a duplicate image name, an empty or non-numeric fovea coordinate or a label outside {0, 1}
is one error naming the file, the spreadsheet row and the column (a NaN would otherwise reach the
loss and make every validation loss NaN). That the fovea lies on its image is checked when the
image is first decoded (:mod:`medmtl.data.refuge_cache`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medmtl.data.errors import DatasetError

TRAIN_IMAGES = "Training400"
TRAIN_CLASS_DIRS = {"Glaucoma": 1, "Non-Glaucoma": 0}
TRAIN_MASKS = "Annotation-Training400/Disc_Cup_Masks"
TRAIN_XLSX = "Annotation-Training400/Fovea_location.xlsx"
VAL_IMAGES = "REFUGE-Validation400"
VAL_MASKS = "REFUGE-Validation400-GT/Disc_Cup_Masks"
VAL_XLSX = "REFUGE-Validation400-GT/Fovea_locations.xlsx"
TEST_IMAGES = "Test400"
TEST_CLASS_DIRS = {"G": 1, "N": 0}
TEST_MASKS = "REFUGE-Test-GT/Disc_Cup_Masks"
TEST_XLSX = "REFUGE-Test-GT/Glaucoma_label_and_Fovea_location.xlsx"

FOVEA_COLUMNS = ("ImgName", "Fovea_X", "Fovea_Y")
#: Accepted names of the label column (stripped); the first present is used.
LABEL_COLUMNS = ("Glaucoma Label", "Label(Glaucoma=1)", "Label")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class RefugeSample:
    id: str
    split: str
    image: Path
    mask: Path
    label: int
    fovea_xy: tuple[float, float]
    annotation: Path | None = None  # the spreadsheet that gives the fovea


def read_spreadsheet(path: Path, required: Iterable[str], need_label: bool = False) -> pd.DataFrame:
    """Read a REFUGE xlsx with stripped column names, indexed by image stem."""
    if not path.is_file():
        raise DatasetError(f"Spreadsheet missing: {path} (REFUGE official layout).")
    try:
        frame = pd.read_excel(path, engine="openpyxl")
    except Exception as error:  # openpyxl raises several unrelated types for a corrupt file
        raise DatasetError(f"Cannot read spreadsheet {path}: {error}.") from error
    frame.columns = [str(c).strip() for c in frame.columns]
    expected = list(required) + ([f"one of {list(LABEL_COLUMNS)}"] if need_label else [])
    missing = [c for c in required if c not in frame.columns]
    if need_label and not any(c in frame.columns for c in LABEL_COLUMNS):
        missing.append(f"a label column ({' / '.join(LABEL_COLUMNS)})")
    if missing:
        raise DatasetError(f"Spreadsheet {path} lacks the columns {missing}; expected {expected}, found {list(frame.columns)}.")
    frame.index = [f"row {i + 2}" for i in range(len(frame))]  # spreadsheet rows: the header is row 1
    frame = frame.dropna(how="all")
    unnamed = frame.index[frame["ImgName"].isna()].tolist()
    if unnamed:
        raise DatasetError(f"Spreadsheet {path}, {unnamed[0]}: the ImgName cell is empty.")
    rows = frame.index.tolist()
    frame.index = [Path(str(name).strip()).stem for name in frame["ImgName"]]
    duplicated = frame.index[frame.index.duplicated()].unique().tolist()
    if duplicated:
        raise DatasetError(f"Spreadsheet {path} lists the images {duplicated[:5]} more than once.")
    for column in [c for c in required if c != "ImgName"]:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = [(row, value) for row, value, number in zip(rows, frame[column], numbers) if not np.isfinite(number)]
        if bad:
            row, value = bad[0]
            shown = "empty" if pd.isna(value) else f"{value!r}, not a number"
            raise DatasetError(f"Spreadsheet {path}, {row}, column {column}: the value is {shown}.")
        frame[column] = numbers.astype(float)
    label = _label_column(frame)
    if label is not None:
        labels = pd.to_numeric(frame[label], errors="coerce")
        bad = [(row, value) for row, value, number in zip(rows, frame[label], labels) if number not in (0, 1)]
        if bad:
            row, value = bad[0]
            raise DatasetError(f"Spreadsheet {path}, {row}, column {label}: the label is {value!r}; expected 0 or 1.")
        frame[label] = labels.astype(int)
    return frame


def _check_rows_have_images(frame: pd.DataFrame, samples: list[RefugeSample], xlsx: Path, folder: Path) -> None:
    found = {s.id for s in samples}
    missing = [stem for stem in frame.index if stem not in found]
    if missing:
        raise DatasetError(f"Image file missing: {xlsx} lists {missing[:5]} but {folder} has no such image.")


def _label_column(frame: pd.DataFrame) -> str | None:
    return next((c for c in LABEL_COLUMNS if c in frame.columns), None)


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"Folder missing: {folder} (REFUGE official layout, see docs/datasets.md).")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what} missing: expected {path}.")
    return path


def _fovea(frame: pd.DataFrame, stem: str, path: Path) -> tuple[float, float]:
    if stem not in frame.index:
        raise DatasetError(f"{path} has no row for image {stem!r} (column ImgName).")
    row = frame.loc[stem]
    return float(row["Fovea_X"]), float(row["Fovea_Y"])


def _check_label(frame: pd.DataFrame, stem: str, label: int, path: Path) -> None:
    column = _label_column(frame)
    if column is not None and stem in frame.index and int(frame.loc[stem, column]) != label:
        raise DatasetError(f"{path}: label of {stem!r} is {frame.loc[stem, column]}, its class folder says {label}.")


def scan_train(root: Path) -> list[RefugeSample]:
    xlsx = root / TRAIN_XLSX
    frame = read_spreadsheet(xlsx, FOVEA_COLUMNS)
    samples = []
    for class_dir, label in TRAIN_CLASS_DIRS.items():
        for image in _images_in(root / TRAIN_IMAGES / class_dir):
            mask = _require_file(root / TRAIN_MASKS / class_dir / f"{image.stem}.bmp", "Mask")
            samples.append(RefugeSample(image.stem, "train", image, mask, label, _fovea(frame, image.stem, xlsx), xlsx))
    _check_rows_have_images(frame, samples, xlsx, root / TRAIN_IMAGES)
    return samples


def scan_val(root: Path) -> list[RefugeSample]:
    xlsx = root / VAL_XLSX
    frame = read_spreadsheet(xlsx, FOVEA_COLUMNS, need_label=True)
    column = _label_column(frame)
    samples = []
    for image in _images_in(root / VAL_IMAGES):
        mask = _require_file(root / VAL_MASKS / f"{image.stem}.bmp", "Mask")
        fovea = _fovea(frame, image.stem, xlsx)
        samples.append(RefugeSample(image.stem, "val", image, mask, int(frame.loc[image.stem, column]), fovea, xlsx))
    _check_rows_have_images(frame, samples, xlsx, root / VAL_IMAGES)
    return samples


def scan_test(root: Path) -> list[RefugeSample]:
    xlsx = root / TEST_XLSX
    frame = read_spreadsheet(xlsx, FOVEA_COLUMNS)
    mask_label = {}
    for class_dir, label in TEST_CLASS_DIRS.items():
        folder = root / TEST_MASKS / class_dir
        if not folder.is_dir():
            raise DatasetError(f"Folder missing: {folder} (REFUGE test masks are split into G/ and N/).")
        for mask in folder.glob("*.bmp"):
            mask_label[mask.stem] = (mask, label)
    samples = []
    for image in _images_in(root / TEST_IMAGES):
        if image.stem not in mask_label:
            raise DatasetError(f"Mask missing: expected {root / TEST_MASKS}/{{G,N}}/{image.stem}.bmp.")
        mask, label = mask_label[image.stem]
        _check_label(frame, image.stem, label, xlsx)
        samples.append(RefugeSample(image.stem, "test", image, mask, label, _fovea(frame, image.stem, xlsx), xlsx))
    _check_rows_have_images(frame, samples, xlsx, root / TEST_IMAGES)
    return samples


def scan_refuge(root: str | Path, splits: Iterable[str] = SPLITS) -> list[RefugeSample]:
    """Every sample of the requested official splits, in a deterministic order."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"REFUGE root folder not found: {root}. Set data.root to the folder that holds "
            f"{TRAIN_IMAGES}/, {VAL_IMAGES}/ and {TEST_IMAGES}/, or use data=refuge_synthetic."
        )
    scanners = {"train": scan_train, "val": scan_val, "test": scan_test}
    samples = []
    for split in splits:
        found = scanners[split](root)
        if not found:
            raise DatasetError(f"No images found for the REFUGE {split} split under {root}.")
        samples += found
    return samples
