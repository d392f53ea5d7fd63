"""The CSV log of a run that crashed twice keeps one row per epoch, the latest attempt winning."""

import pandas as pd

from medmtl.utils.csv_log import merge_after_resume, set_aside_before_resume


def _write(path, epochs, tag):
    pd.DataFrame({"epoch": epochs, "val/loss": [f"{tag}{e}" for e in epochs]}).to_csv(path, index=False)


def test_two_crashes_then_a_full_attempt(tmp_path):
    log = tmp_path / "metrics.csv"
    _write(log, [0, 1, 2], "a")  # first attempt crashed during epoch 3 (epoch 2 logged, not checkpointed)
    set_aside_before_resume(tmp_path)
    _write(log, [2, 3], "b")  # second attempt resumed at epoch 2, crashed again
    set_aside_before_resume(tmp_path)
    _write(log, [3, 4], "c")  # third attempt resumed at epoch 3 and finished
    merge_after_resume(tmp_path)
    merged = pd.read_csv(log)
    assert merged["val/loss"].tolist() == ["a0", "a1", "b2", "c3", "c4"]
    assert not (tmp_path / "metrics.before_resume.csv").exists()


def test_nothing_to_merge_without_a_resume(tmp_path):
    _write(tmp_path / "metrics.csv", [0, 1], "a")
    merge_after_resume(tmp_path)
    assert pd.read_csv(tmp_path / "metrics.csv")["val/loss"].tolist() == ["a0", "a1"]
