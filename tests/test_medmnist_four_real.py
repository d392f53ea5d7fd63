"""The four real MedMNIST datasets as four tasks (experiment=medmnist_four_real): Schafer et al. 2024's
recipe, one budget for the multi-task and the single-task arms, a sweep the report turns into a
table with Delta_MTL against the single-task networks."""

import json

import pytest

from helpers import MEDMNIST_SAMPLE, compose_train, needs_medmnist_sample, run, train_and_read_test_metrics
from medmtl.analysis.report import build_table, collect

FOUR = ["breastmnist", "pneumoniamnist", "retinamnist", "adrenalmnist3d"]


def arms(cfg) -> list[list[str]]:
    """The sweep's data.flags choices, as lists of flags."""
    text = cfg.hydra.sweeper.params["data.flags"]
    return [choice.strip("[]").split(",") for choice in text.split("],[")]


def test_the_sweep_pairs_the_four_task_network_with_one_network_per_dataset_over_three_seeds():
    cfg = compose_train(["experiment=medmnist_four_real"])
    assert cfg.hydra.sweeper.params["seed"] == "0,1,2"
    assert arms(cfg) == [FOUR, *([flag] for flag in FOUR)]


def test_every_arm_trains_with_schafer_2024s_recipe_and_the_same_budget_per_task():
    """The budget a task gets is its batches (steps x epochs) of batch_size samples: equal in every arm."""
    budgets = set()
    for flags in arms(compose_train(["experiment=medmnist_four_real"])):
        cfg = compose_train(["experiment=medmnist_four_real", f"data.flags=[{','.join(flags)}]"])
        assert cfg.optim.name == "ga" and cfg.optim.strategy.sampler == "cyclic"
        assert cfg.optim.optimizer.lr == 1e-3 and cfg.optim.optimizer.weight_decay == 0.05
        assert cfg.data.input_range == "unit" and cfg.data.loss_normalization and cfg.data.augment
        assert cfg.model.backbone == "resnet18" and cfg.model.norm == "layernorm_noaffine" and cfg.model.weights_path is None
        budgets.add((cfg.data.batch_size, cfg.data.batch_size_3d, cfg.data.steps_per_epoch, cfg.trainer.max_epochs))
    assert budgets == {(16, 4, 100, 9)}


def test_the_joint_training_arm_keeps_the_recipes_optimizer():
    """optim=vanilla (joint batches) brings its own Adam at 1e-4; the experiment fixes AdamW 1e-3, decay 0.05."""
    arm = ["optim=vanilla", "data.joint_batches=true", "data.flags=[breastmnist,pneumoniamnist,retinamnist]"]
    optimizer = compose_train(["experiment=medmnist_four_real", *arm]).optim.optimizer
    assert optimizer._target_ == "torch.optim.AdamW" and optimizer.lr == 1e-3 and optimizer.weight_decay == 0.05


def test_a_tiny_sweep_gives_a_table_whose_delta_mtl_is_the_papers_formula_on_its_runs(tmp_path):
    """Five arms of one seed on the synthetic twin; Delta_MTL of the four-task row recomputed here
    from the runs' own metrics.json (Maninis et al. 2019: the mean relative AUC change per task)."""
    sweep = tmp_path / "sweep"
    overrides = [
        "-m",
        "experiment=medmnist_four_real",
        "seed=0",
        "model.backbone=test_resnet",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "data.synthetic.n_train=8",
        "data.synthetic.n_val=4",
        "data.synthetic.n_test=32",  # every AUC away from 0 (four samples can give 0)
        "data.batch_size=4",
        "data.steps_per_epoch=2",
        f"hydra.sweep.dir={sweep}",
    ]
    done = run("train.py", overrides, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(path.read_text()) for path in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 5 and {r["iterations"] for r in records} == {2}  # one budget
    single = {flag: r["test"][f"{flag}_auc"] for r in records if r["n_tasks"] == 1 for flag in FOUR if f"{flag}_auc" in r["test"]}
    (joint,) = [r["test"] for r in records if r["n_tasks"] == 4]
    expected = 100 * sum((joint[f"{flag}_auc"] - single[flag]) / single[flag] for flag in FOUR) / 4
    table = build_table(collect(sweep), baseline="ga (1 task)")
    assert set(table.methods) == {"ga (1 task)", "ga (4 tasks)"}
    assert table.delta["ga (4 tasks)"] == pytest.approx(expected)


@pytest.mark.slow
@needs_medmnist_sample
@pytest.mark.real_data
def test_the_four_real_datasets_train_together_and_pneumonia_learns_within_three_epochs(tmp_path):
    """300 steps of the experiment on the official files (about 6 minutes on 2 cores): every task is
    trained and scored, and PneumoniaMNIST, the largest, is far above chance (0.5; its validation
    AUC passed 0.92 at step 300 of the recorded run). The smaller tasks learn more slowly in this
    recipe (docs/results.md): at 300 steps their AUCs are not yet a margin to assert."""
    test = train_and_read_test_metrics(
        ["experiment=medmnist_four_real", "data=medmnist", f"data.root={MEDMNIST_SAMPLE}", "trainer.max_epochs=3"], tmp_path
    )
    assert all(0.0 <= test[f"{flag}_auc"] <= 1.0 and f"{flag}_acc" in test for flag in FOUR), test
    assert test["pneumoniamnist_auc"] > 0.75, test
