"""The entry points as a user runs them: one epoch on a tiny synthetic REFUGE, then eval."""

import json
from pathlib import Path

import pytest

from helpers import PROJECT_ROOT, TINY, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cli")
    first = run("train.py", TINY, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run("train.py", TINY + ["optim=vanilla"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    return tmp_path, sorted((tmp_path / "logs" / "train" / "runs").iterdir())


def test_each_run_writes_its_own_folder_with_metrics_config_and_csv(trained):
    _, runs = trained
    assert len(runs) == 2, "two runs must not share (and overwrite) one folder"
    for folder in runs:
        record = json.loads((folder / "metrics.json").read_text())
        for key in ("auc", "auc_fc", "auc_vcdr", "dice_od", "dice_oc", "fovea_error_grid", "fovea_error_px"):
            assert key in record["test"]
        assert record["num_parameters"] > 0 and record["seconds_per_iteration"] > 0
        assert record["seed"] == 42 and record["fold"] == 0
        assert "model.width=0.0625" in record["overrides"]
        assert (folder / "config_resolved.yaml").is_file() and (folder / ".hydra" / "config.yaml").is_file()
        assert (folder / "csv" / "metrics.csv").is_file()
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        assert (folder / "predictions.npz").is_file()
    strategies = {json.loads((f / "metrics.json").read_text())["strategy"] for f in runs}
    assert strategies == {"mtl_io", "vanilla"}


def test_iterations_count_mini_batches_not_optimizer_steps(trained):
    _, runs = trained
    for folder in runs:
        record = json.loads((folder / "metrics.json").read_text())
        # the CV training fold holds 4/5 of the 30 pooled images = 24; batch 4 -> 6 mini-batches
        assert record["iterations"] == 24 // 4


def test_eval_entry_point_tests_a_checkpoint(trained):
    tmp_path, runs = trained
    ckpt = runs[0] / "checkpoints" / "last.ckpt"
    result = run(
        "eval.py",
        [o for o in TINY if not o.startswith(("experiment", "trainer"))]
        + ["model.width=0.0625", "trainer=cpu", "data=refuge_synthetic", f"ckpt_path={ckpt}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evals = sorted((tmp_path / "logs" / "eval" / "runs").iterdir())
    assert "dice_od" in json.loads((evals[-1] / "metrics.json").read_text())["test"]


def test_missing_dataset_is_one_sentence_not_a_stack_trace(tmp_path):
    result = run("train.py", ["data=refuge", f"data.root={tmp_path / 'absent'}", "trainer.max_epochs=1"], tmp_path)
    assert result.returncode != 0
    assert "REFUGE root folder not found" in result.stderr
    assert "Traceback" not in result.stderr


def inspect_run(folder: Path) -> dict:
    """Execute notebooks/inspect_run.ipynb on ``folder``; its namespace."""
    import matplotlib

    matplotlib.use("Agg")
    notebook = json.loads((PROJECT_ROOT / "notebooks" / "inspect_run.ipynb").read_text())
    code = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    exec(code[0], namespace)  # imports (its run lookup finds nothing here: logs live in tmp)
    namespace["run"] = folder
    for cell in code[1:]:
        exec(cell, namespace)
    return namespace


def test_inspection_notebook_runs_on_a_run_folder(trained):
    _, runs = trained
    namespace = inspect_run(runs[0])
    assert "auc" in namespace["record"]["test"]
    assert len(namespace["panels"]) == len(namespace["predictions"]["example_index"])


@pytest.mark.slow
def test_a_reused_run_folder_with_another_config_is_refused_and_left_as_it_was(tmp_path):
    """One folder, one configuration: the second command (more epochs) is refused before Hydra
    writes anything there; continuing the run is a new run started from its checkpoint."""
    folder = tmp_path / "run"
    first = run("train.py", TINY + [f"hydra.run.dir={folder}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {name: (folder / name).read_bytes() for name in ("metrics.json", ".hydra/overrides.yaml", ".hydra/config.yaml")}
    one_epoch = json.loads(before["metrics.json"])["iterations"]

    second = run("train.py", TINY + [f"hydra.run.dir={folder}", "trainer.max_epochs=2"], tmp_path)
    assert second.returncode == 2
    assert "holds a run of another configuration" in second.stderr and "Traceback" not in second.stderr
    for name, content in before.items():
        assert (folder / name).read_bytes() == content, f"{name} of the earlier run was changed"
    assert not (folder / "failure.json").exists(), "the refusal wrote into the other run's folder"

    continued = tmp_path / "continued"
    third = run(
        "train.py",
        TINY + [f"hydra.run.dir={continued}", "trainer.max_epochs=2", f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"],
        tmp_path,
    )
    assert third.returncode == 0, third.stderr[-3000:]
    record = json.loads((continued / "metrics.json").read_text())
    # the new run trained only the missing epoch: its iteration counter continues from the first
    assert record["iterations"] == 2 * one_epoch and record["epochs"] == 2


@pytest.mark.parametrize(
    "optim",
    ["pcgrad", *(pytest.param(o, marks=pytest.mark.slow) for o in ("mtl_io", "dwa", "ga optim.strategy.sampler=balanced"))],
)
def test_a_run_killed_mid_epoch_resumes_to_the_same_final_metrics(tmp_path, optim):
    """kill -9 in the middle of epoch 2, rerun the same command in the same folder: the final test
    metrics equal those of an uninterrupted run (CPU, fixed seed). Dropout, augmentation, shuffling,
    PCGrad's random order, DWA's epoch-level weights and GA's per-task loader positions (the
    balanced sampler leaves each task part-way through its loader at an epoch's end) all have to be
    restored for this to hold."""
    common = TINY + [f"optim={optim.split()[0]}", *optim.split()[1:], "trainer.max_epochs=4", "data.augment=true"]
    straight = run("train.py", common + [f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    folder = tmp_path / "killed"
    env_crash = common + [
        f"hydra.run.dir={folder}",
        "+callbacks.crash._target_=crash_callback.KillDuringTraining",
        "+callbacks.crash.epoch=2",
        "+callbacks.crash.batch=3",
    ]
    crashed = run("train.py", env_crash, tmp_path)
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    assert not (folder / "metrics.json").exists()
    resumed = run("train.py", common + [f"hydra.run.dir={folder}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    record = json.loads((folder / "metrics.json").read_text())
    assert record["resumed_from"].endswith("last.ckpt")
    assert record["iterations"] == expected["iterations"]
    assert record["best_val_loss"] == pytest.approx(expected["best_val_loss"], rel=1e-6, abs=1e-9)
    for name, value in expected["test"].items():
        assert record["test"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    # nothing of the crashed attempt's log is lost: one validation row per epoch, as in the straight run
    import pandas as pd

    def val_losses(run_folder):
        log = pd.read_csv(run_folder / "csv" / "metrics.csv")
        return log.dropna(subset=["val/loss"]).set_index("epoch")["val/loss"]

    pd.testing.assert_series_equal(val_losses(folder), val_losses(tmp_path / "straight"), rtol=1e-6)
    # the best checkpoint may predate the crash: the final weights are the sharper check
    import torch

    final = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    reference = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert final.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-6, atol=1e-8, msg=name)


@pytest.mark.slow
def test_rerunning_an_interrupted_sweep_trains_only_the_missing_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    command = ["-m", *TINY, "optim=vanilla,mtl_io", f"hydra.sweep.dir={sweep}"]
    first = run("train.py", command, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    finished, unfinished = sweep / "0", sweep / "1"
    kept = (finished / "metrics.json").read_text()
    (unfinished / "metrics.json").unlink()  # as if job 1 had been killed before its end

    again = run("train.py", command, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"skipped (finished before): {finished}" in again.stdout
    assert f"skipped (finished before): {unfinished}" not in again.stdout
    assert (finished / "metrics.json").read_text() == kept, "a finished job was trained again"
    assert json.loads((unfinished / "metrics.json").read_text())["strategy"] == "mtl_io"

    # another job list in the same folder: job 0 would now be another config, which is refused
    changed = run("train.py", ["-m", *TINY, "optim=pcgrad", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert changed.returncode == 2
    assert "was made by another sweep" in changed.stderr and "Traceback" not in changed.stderr
    assert (finished / "metrics.json").read_text() == kept


@pytest.mark.slow
def test_wandb_offline_run_is_grouped_and_holds_the_test_examples(tmp_path):
    env_overrides = TINY + ["logger=wandb", "logger.wandb.mode=offline", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run("train.py", env_overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = list(runs[0].rglob("media/images/test/examples_*.png"))
    assert len(images) >= 2, "the kept test examples were not logged as images"
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(images[0]).convert("RGB"), dtype=np.float64)
    assert pixels.mean() > 20 and pixels.std() > 10, "the logged image is blank"
    # group model-strategy-data and job type fold<k>, as written into the run's record file
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"unet_vgg16-mtl_io-refuge_synthetic" in record and b"fold0" in record


@pytest.mark.slow
def test_idrid_table1_sweep_and_its_report_as_a_user_runs_them(tmp_path):
    """Roy 2025 Table 1 on the synthetic twin (one seed, two epochs): three networks, one table
    with their columns, and the Figs. 4-5 overlay; the classifier arm has no lesion column."""
    sweep = tmp_path / "sweep"
    trained = run(
        "train.py",
        [
            "-m",
            "experiment=idrid_table1",
            "preset=tiny",
            "seed=0",
            "trainer.max_epochs=2",
            "data.resolution=[32,48]",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = run("report.py", [str(sweep), "--metrics", "retinopathy_acc", "od_dice"], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line
        for line in (sweep / "report" / "results.md").read_text().splitlines()
        if line.startswith("| vanilla")
    }
    assert set(rows) == {
        "vanilla (ResNetClassifier, 2 tasks)",
        "vanilla (DeepLabV3Plus, 5 tasks)",
        "vanilla (MoEDeepLabV3Plus, 7 tasks)",
    }
    assert rows["vanilla (ResNetClassifier, 2 tasks)"].split("|")[3].strip() == "-"  # no od_dice
    assert rows["vanilla (DeepLabV3Plus, 5 tasks)"].split("|")[2].strip() == "-"  # no retinopathy_acc
    assert (sweep / "report" / "overlay.png").is_file()
    moe = next(
        f
        for f in sweep.iterdir()
        if (f / "metrics.json").is_file() and json.loads((f / "metrics.json").read_text())["model"] == "MoEDeepLabV3Plus"
    )
    namespace = inspect_run(moe)  # the notebook reads an IDRiD run without validation: curves, lesions, grades
    assert namespace["metrics"] == [] and len(namespace["panels"]) == 4


def test_without_validation_data_the_last_weights_are_tested(tmp_path):
    """Roy 2025's protocol (data.val_fraction=0): no model selection, no warning about a missing
    val/loss, test metrics of the final weights."""
    folder = tmp_path / "run"
    result = run(
        "train.py",
        [
            "experiment=idrid_table1",
            "preset=tiny",
            "idrid_arm=resnet50",
            "trainer.max_epochs=2",
            "data.val_fraction=0",
            "data.resolution=[32,48]",
            f"hydra.run.dir={folder}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not find the monitored key" not in result.stdout + result.stderr
    record = json.loads((folder / "metrics.json").read_text())
    assert record["best_checkpoint"] == "" and record["epochs"] == 2
    assert "retinopathy_acc" in record["test"]


@pytest.mark.slow
def test_training_values_epoch_means_equal_the_mean_of_their_steps_and_steps_follow_the_logger_cadence(tmp_path):
    """The module keeps the training values' epoch means itself (medmtl.epoch_means): with every step
    written, each epoch value is the mean of that epoch's step values (equal batches of 4: 24
    training images, 6 steps); with log_every_n_steps=4 fewer step rows are written, the epoch means
    still are."""
    import pandas as pd

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    every = run("train.py", TINY + ["optim=vanilla", "trainer.max_epochs=2", "trainer.log_every_n_steps=1"], tmp_path / "a")
    assert every.returncode == 0, every.stderr[-3000:]
    (folder,) = (tmp_path / "a" / "logs" / "train" / "runs").iterdir()
    log = pd.read_csv(folder / "csv" / "metrics.csv")
    for name in ("loss/od", "loss/glaucoma", "loss/total"):
        steps = log.dropna(subset=[f"train/{name}_step"])
        epochs = log.dropna(subset=[f"train/{name}_epoch"]).set_index("epoch")[f"train/{name}_epoch"]
        assert steps.groupby("epoch").size().tolist() == [6, 6]
        expected = steps.groupby("epoch")[f"train/{name}_step"].mean()
        pd.testing.assert_series_equal(epochs, expected, check_names=False, rtol=1e-5)
    assert log.dropna(subset=["train/loss"])["train/loss"].tolist() == pytest.approx(
        log.dropna(subset=["train/loss/total_epoch"])["train/loss/total_epoch"].tolist()
    )

    sparse = run("train.py", TINY + ["optim=vanilla", "trainer.max_epochs=2", "trainer.log_every_n_steps=4"], tmp_path / "b")
    assert sparse.returncode == 0, sparse.stderr[-3000:]
    (folder,) = (tmp_path / "b" / "logs" / "train" / "runs").iterdir()
    log = pd.read_csv(folder / "csv" / "metrics.csv")
    written = log.dropna(subset=["train/loss/od_step"])["step"].tolist()
    assert 1 <= len(written) < 12 and log["train/loss/od_epoch"].notna().sum() == 2
