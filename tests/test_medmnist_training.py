"""MedMNIST training through the entry point: the real two-dataset run learns, the 12-dataset
configuration of Schafer et al. 2024 runs on the synthetic twin, strategies that need one batch for every
task are refused in one sentence."""

import json

import pytest

from helpers import MEDMNIST_SAMPLE as REAL
from helpers import needs_medmnist_sample as needs_real
from helpers import run


@pytest.mark.slow
@needs_real
@pytest.mark.real_data
def test_breast_and_pneumonia_both_learn_on_the_official_files(tmp_path):
    result = run(
        "train.py",
        ["experiment=medmnist_quick", f"data.root={REAL}", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    # chance is 0.5; one epoch of GA reaches ~0.8 (breast, 546 images) and ~0.94 (pneumonia)
    assert test["breastmnist_auc"] > 0.7 and test["pneumoniamnist_auc"] > 0.85, test


@pytest.mark.slow
def test_the_twelve_dataset_configuration_runs_on_the_synthetic_twin(tmp_path):
    overrides = [
        "experiment=medmnist_umedpt",
        "model.backbone=test_resnet",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "data.synthetic.n_train=8",
        "data.synthetic.n_val=4",
        "data.synthetic.n_test=4",
        "data.batch_size=4",
        "data.steps_per_epoch=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run("train.py", overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    flags = [
        "pathmnist",
        "chestmnist",
        "dermamnist",
        "octmnist",
        "pneumoniamnist",
        "breastmnist",
        "bloodmnist",
        "organmnist3d",
        "nodulemnist3d",
        "adrenalmnist3d",
        "vesselmnist3d",
        "synapsemnist3d",
    ]
    assert all(f"{flag}_acc" in record["test"] for flag in flags)
    assert record["iterations"] == 2 and record["task_metrics"] == {f: f"{f}_auc" for f in flags}


def test_a_strategy_that_needs_one_batch_for_every_task_is_refused(tmp_path):
    result = run(
        "train.py", ["experiment=medmnist_quick", "data=medmnist_synthetic", "optim=pcgrad", "trainer.max_epochs=1"], tmp_path
    )
    assert result.returncode == 2
    assert "use optim=ga" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("optim", ["vanilla", "pcgrad"])
def test_with_joint_batches_every_strategy_applies(tmp_path, optim):
    overrides = [
        "experiment=medmnist_quick",
        "data=medmnist_synthetic",
        "data.joint_batches=true",
        "data.flags=[breastmnist,bloodmnist]",
        f"optim={optim}",
        "trainer.max_epochs=1",
        "data.steps_per_epoch=3",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run("train.py", overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["iterations"] == 3 and {"breastmnist_auc", "bloodmnist_acc"} <= set(record["test"])
