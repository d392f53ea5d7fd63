"""Single-task learning selects each task's network on its own validation loss (Pascal et al. 2022)."""

import json

import pandas as pd
import pytest
import torch

from helpers import TINY, run
from medmtl.checkpoints import read_checkpoint


def member_weights(checkpoint: dict, task: str) -> dict[str, torch.Tensor]:
    prefix = f"model.members.{task}."
    return {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


@pytest.mark.slow
def test_each_task_network_is_tested_at_its_own_lowest_validation_loss(tmp_path):
    folder = tmp_path / "run"
    # lr 0.01 makes the tasks' validation losses bottom out at different epochs (a property of this seeded run)
    result = run(
        "train.py",
        [
            *TINY,
            "optim=stl",
            "trainer.max_epochs=5",
            "optim.optimizer.lr=0.01",
            "callbacks.model_checkpoint.save_top_k=-1",
            f"hydra.run.dir={folder}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((folder / "metrics.json").read_text())
    logged = pd.read_csv(folder / "csv" / "metrics.csv").dropna(subset=["val/loss"]).set_index("epoch")
    expected = {task: int(logged[f"val/loss/{task}"].idxmin()) for task in ["glaucoma", "od", "oc", "fovea"]}
    assert record["best_epochs_per_task"] == expected
    assert len(set(expected.values())) > 1, "all tasks peaked together: the test cannot tell per-task from joint"
    composed = read_checkpoint(record["best_checkpoint"])
    for task, epoch in expected.items():
        at_epoch = read_checkpoint(folder / "checkpoints" / f"epoch{epoch:03d}.ckpt")
        theirs = member_weights(at_epoch, task)
        for name, value in member_weights(composed, task).items():
            torch.testing.assert_close(value, theirs[name], rtol=0, atol=0, msg=f"{task}: {name}")


def test_per_task_selection_needs_separate_networks(tmp_path):
    result = run(
        "train.py", [*TINY, "optim=vanilla", "+optim.model_selection=per_task", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path
    )
    assert result.returncode == 2 and "needs one network per task (optim=stl)" in result.stderr
