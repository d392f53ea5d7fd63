"""IDRiD layout: the CSV quirks, and the shared sample read as it is (20 segmentation images with OD
and HE masks, grading CSVs without their images)."""

import numpy as np
import pytest
from PIL import Image

from helpers import IDRID_SAMPLE, needs_idrid_sample
from medmtl.data.errors import DatasetError
from medmtl.data.idrid_layout import read_grading, read_points, read_table, scan_idrid

REAL, needs_real = IDRID_SAMPLE, needs_idrid_sample


def test_grading_csv_with_crlf_trailing_empty_columns_blank_rows_and_spaced_headers(tmp_path):
    path = tmp_path / "grades.csv"
    path.write_bytes(
        b"Image name,Retinopathy grade,Risk of macular edema ,,,\r\nIDRiD_001,3,2,,,\r\n,,,,,\r\nIDRiD_002, 0 ,1,,,\r\n\r\n"
    )
    assert read_grading(path) == {"IDRiD_001": (3, 2), "IDRiD_002": (0, 1)}
    assert list(read_table(path)[0]) == ["Image name", "Retinopathy grade", "Risk of macular edema"]


def test_localisation_csv(tmp_path):
    path = tmp_path / "od.csv"
    path.write_bytes(b"Image No,X- Coordinate,Y - Coordinate,,\r\nIDRiD_01,3050.5,1500,,\r\n,,,,\r\n")
    assert read_points(path) == {"IDRiD_01": (3050.5, 1500.0)}


def test_a_csv_without_the_expected_column_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("Image name,grade\nIDRiD_001,3\n")
    with pytest.raises(DatasetError, match="Retinopathy grade"):
        read_grading(path)


def test_missing_root_is_one_sentence(tmp_path):
    with pytest.raises(DatasetError, match="IDRiD root folder not found"):
        scan_idrid(tmp_path / "absent", "train")


@needs_real
def test_the_shared_sample_as_it_is():
    samples = scan_idrid(REAL, "train", grades=False)
    assert len(samples) == 20 and all(s.is_segmentation for s in samples)
    first = samples[0]
    assert first.name == "IDRiD_01" and first.masks["od"] is not None and first.masks["he"] is not None
    assert first.masks["ma"] is None and first.masks["se"] is None
    mask = np.array(Image.open(first.masks["od"])) > 0
    assert mask.shape == (2848, 4288) and 0.005 < mask.mean() < 0.05  # the disc: a few percent of the image
    assert (
        len(read_grading(REAL / "B. Disease Grading" / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv")) == 413
    )


@needs_real
def test_grading_rows_without_their_images_stop_the_run_unless_skipping_is_asked(caplog):
    """The sample ships the grading CSVs without the grading images: with the grading tasks on,
    that is one sentence naming the CSV and the ways out; skip_bad_samples logs each row left out."""
    with pytest.raises(DatasetError, match=r"grades 413 images that are not in .*data.grades=\[\].*skip_bad_samples"):
        scan_idrid(REAL, "train")
    with caplog.at_level("WARNING"):
        samples = scan_idrid(REAL, "train", skip_bad_samples=True)
    assert len(samples) == 20
    skipped = [r for r in caplog.records if "is absent; its row is left out" in r.getMessage()]
    assert len(skipped) == 413 and "IDRiD_001.jpg" in skipped[0].getMessage()
    assert any("413 of 413 labelled images left out" in r.getMessage() for r in caplog.records)
