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


# ----- the catalogue of issue 11: every malformed value is named where it is read -------------------
def _edit_xlsx(path, edit):
    frame = pd.read_excel(path)
    edit(frame)
    frame.to_excel(path, index=False)


def _set(column, row, value):
    def edit(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value

    return edit


def _duplicate_first_row(frame):
    frame.loc[len(frame)] = frame.iloc[0]


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


XLSX_CASES = {
    "empty fovea cell": (
        layout.TRAIN_XLSX,
        _set("Fovea_X", 2, None),
        r"Fovea_location.xlsx, row 4, column Fovea_X: the value is empty",
    ),
    "text in a number": (
        layout.VAL_XLSX,
        _set("Fovea_Y", 0, "abc"),
        r"Fovea_locations.xlsx, row 2, column Fovea_Y: the value is 'abc', not a number",
    ),
    "label outside 0/1": (
        layout.VAL_XLSX,
        _set("Glaucoma Label", 1, 2),
        r"row 3, column Glaucoma Label: the label is 2; expected 0 or 1",
    ),
    "an image listed twice": (layout.TEST_XLSX, _duplicate_first_row, r"lists the images \['T0001'\] more than once"),
    "fovea off the image": (
        layout.TRAIN_XLSX,
        _set("Fovea_X", 0, 5000.0),
        r"fovea: the point \(5000, .*\) lies outside the 176x160 image",
    ),
}


@pytest.mark.parametrize("case", list(XLSX_CASES))
def test_malformed_spreadsheet_values_are_named_with_file_row_and_column(broken_root, case):
    relative, edit, message = XLSX_CASES[case]
    _edit_xlsx(broken_root / relative, edit)
    with pytest.raises(DatasetError, match=message):
        setup(broken_root)


@pytest.mark.parametrize("relative", ["Test400/T0001.jpg", "REFUGE-Validation400-GT/Disc_Cup_Masks/V0002.bmp"])
def test_a_truncated_image_or_mask_is_refused_not_filled_with_grey(broken_root, relative):
    _truncate(broken_root / relative)
    with pytest.raises(DatasetError, match=rf"Cannot decode .*{relative.split('/')[-1]}: the file is truncated"):
        setup(broken_root)


def test_an_empty_test_split_stops_before_training(tmp_path):
    from medmtl.data.contract import MultiTaskDataModule

    class NoTest(MultiTaskDataModule):
        tasks = []

        def make_evaluator(self):
            return None

        def split_sizes(self):
            return {"train": 10, "val": 2, "test": 0}

    NoTest().check_splits("fit")
    with pytest.raises(DatasetError, match=r"The test split of NoTest is empty .*or set test=false"):
        NoTest().check_splits("test")


def test_a_dataset_without_test_images_is_refused_before_training_starts(tmp_path):
    """IDRiD with no test image at all: one sentence before the first epoch, not empty metrics after it."""
    from medmtl.data.idrid_synthetic import SyntheticIdridDataModule
    from medmtl.run import check_data_before_training

    dm = SyntheticIdridDataModule(
        str(tmp_path / "idrid"), resolution=(32, 48), synthetic={"n_segmentation": [4, 0], "n_grading": [4, 0], "size": [48, 72]}
    )
    with pytest.raises(DatasetError, match=r"The test split of SyntheticIdridDataModule is empty"):
        check_data_before_training(dm, test=True)
    check_data_before_training(dm, test=False)


IDRID_CSV = "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"
IDRID_CASES = {
    "empty grade": (b"IDRiD_001,,1", r"line 2, column 'Retinopathy grade': the value is empty"),
    "grade out of range": (b"IDRiD_001,7,1", r"line 2, column 'Retinopathy grade': 7 is outside 0-4"),
    "non-numeric edema": (b"IDRiD_001,2,high", r"column 'Risk of macular edema': 'high' is not an integer"),
    "an image graded twice": (b"IDRiD_001,2,1\r\nIDRiD_001,3,1", r"lists the images \['IDRiD_001'\] more than once"),
}


@pytest.mark.parametrize("case", list(IDRID_CASES))
def test_malformed_idrid_grades_are_named_with_file_line_and_column(tmp_path, case):
    from medmtl.data.idrid_layout import read_grading

    rows, message = IDRID_CASES[case]
    path = tmp_path / "grades.csv"
    path.write_bytes(b"Image name,Retinopathy grade,Risk of macular edema ,,\r\n" + rows + b"\r\n")
    with pytest.raises(DatasetError, match=message):
        read_grading(path)


def test_a_missing_grading_csv_is_an_error_only_while_grading_is_on(tmp_path):
    from medmtl.data.idrid_layout import scan_idrid
    from medmtl.data.idrid_synthetic import write_synthetic_idrid

    root = write_synthetic_idrid(tmp_path / "idrid", n_segmentation=(2, 1), n_grading=(2, 1), size=(48, 72))
    (root / IDRID_CSV).unlink()
    with pytest.raises(DatasetError, match=r"IDRiD grading labels missing: expected .*Training Labels.csv; set data.grades=\[\]"):
        scan_idrid(root, "train")
    assert len(scan_idrid(root, "train", grades=False)) == 2


def test_medmnist_labels_outside_the_classes_and_truncated_files_are_named(tmp_path):
    from medmtl.data.medmnist import load_split
    from medmtl.data.medmnist_synthetic import write_synthetic_medmnist

    (path,) = write_synthetic_medmnist(tmp_path, ["breastmnist"], n=(8, 4, 4))
    images, labels = load_split(path, "train", "breastmnist")
    assert len(images) == len(labels) == 8
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["val_labels"][2] = 5
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=r"breastmnist.npz: val label of sample 2 is \[5\], outside 0-1"):
        load_split(path, "val", "breastmnist")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"Cannot read .*breastmnist.npz: it is truncated"):
        load_split(path, "train", "breastmnist")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("nan label", r"val label of sample 1 is \[nan\], not a whole class number"),
        ("fractional label", r"val label of sample 1 is \[0.5\], not a whole class number"),
        ("float images", r"val images are float32, not uint8"),
        ("wrong size", r"val images have shape \(32, 32\) per sample, breastmnist at 28 px has \(28, 28\)"),
        ("colour for grey", r"val images have shape \(28, 28, 3\) per sample"),
        ("label columns", r"val labels have shape \(4, 2\), expected \(N, 1\)"),
    ],
)
def test_medmnist_values_are_checked_not_only_the_file(tmp_path, fault, message):
    """Values that would train and test with exit 0 (a NaN or fractional label cast to class 0,
    float images in [0, 1] divided by 255 again, another size) are refused in one sentence naming
    the file, the split and the sample."""
    from medmtl.data.medmnist import load_split
    from medmtl.data.medmnist_synthetic import write_synthetic_medmnist

    (path,) = write_synthetic_medmnist(tmp_path, ["breastmnist"], n=(8, 4, 4))
    assert len(load_split(path, "val", "breastmnist", 28)[0]) == 4
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    if fault in ("nan label", "fractional label"):
        labels = arrays["val_labels"].astype(np.float32)
        labels[1] = np.nan if fault == "nan label" else 0.5
        arrays["val_labels"] = labels
    elif fault == "float images":
        arrays["val_images"] = arrays["val_images"].astype(np.float32) / 255
    elif fault == "wrong size":
        arrays["val_images"] = np.zeros((4, 32, 32), dtype=np.uint8)
    elif fault == "colour for grey":
        arrays["val_images"] = np.zeros((4, 28, 28, 3), dtype=np.uint8)
    else:
        arrays["val_labels"] = np.zeros((4, 2), dtype=np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message) as raised:
        load_split(path, "val", "breastmnist", 28)
    assert "breastmnist.npz" in str(raised.value) and "\n" not in str(raised.value)
