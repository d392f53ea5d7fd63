"""Every malformed input ends in one DatasetError that names the file and what was expected."""

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from medmtl.data import refuge_layout as layout
from medmtl.data.errors import DatasetError
from medmtl.data.refuge import RefugeDataModule


@pytest.fixture
def broken_root(refuge_root, tmp_path):
    root = tmp_path / "REFUGE"
    shutil.copytree(refuge_root, root, ignore=shutil.ignore_patterns(".medmtl_cache"))
    return root


def setup(root):
    dm = RefugeDataModule(str(root), image_size=32)
    dm.prepare_data()
    dm.setup()


def test_missing_root_names_the_folder_and_the_way_out(tmp_path):
    with pytest.raises(DatasetError, match=r"REFUGE root folder not found: .*nowhere.*data=refuge_synthetic"):
        setup(tmp_path / "nowhere")


def test_missing_image_listed_in_the_spreadsheet(broken_root):
    (broken_root / layout.VAL_IMAGES / "V0003.jpg").unlink()
    with pytest.raises(DatasetError, match=r"Image file missing: .*Fovea_locations.xlsx.*V0003"):
        setup(broken_root)


def test_missing_mask(broken_root):
    (broken_root / layout.VAL_MASKS / "V0002.bmp").unlink()
    with pytest.raises(DatasetError, match=r"Mask missing: expected .*V0002.bmp"):
        setup(broken_root)


def test_mask_with_values_outside_the_encoding(broken_root):
    path = broken_root / layout.VAL_MASKS / "V0001.bmp"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    mask[0, 0] = 100
    cv2.imwrite(str(path), mask)
    with pytest.raises(DatasetError, match=r"V0001.bmp has values \[100\] outside \{0, 128, 255\}"):
        setup(broken_root)


def test_spreadsheet_without_the_expected_columns(broken_root):
    path = broken_root / layout.TRAIN_XLSX
    frame = pd.read_excel(path).rename(columns={"Fovea_X": "X"})
    frame.to_excel(path, index=False)
    with pytest.raises(DatasetError, match=r"Fovea_location.xlsx lacks the columns \['Fovea_X'\]"):
        setup(broken_root)


def test_validation_spreadsheet_without_a_label_column(broken_root):
    path = broken_root / layout.VAL_XLSX
    pd.read_excel(path).drop(columns=["Glaucoma Label"]).to_excel(path, index=False)
    with pytest.raises(DatasetError, match=r"lacks the columns \[.*label column"):
        setup(broken_root)


def test_image_that_cannot_be_decoded(broken_root):
    (broken_root / layout.TEST_IMAGES / "T0001.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=r"Cannot decode image .*T0001.jpg"):
        setup(broken_root)


def test_mask_of_another_size_than_its_image(broken_root):
    path = broken_root / layout.TEST_IMAGES / "T0002.jpg"
    cv2.imwrite(str(path), np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"T0002.bmp is 160x160, its image 40x40"):
        setup(broken_root)
