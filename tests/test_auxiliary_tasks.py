"""Auxiliary-only tasks (``Task.auxiliary``): trained, never evaluated. The decoder-focused networks
predict them only as initial predictions feeding the distillation (the survey's PAD-Net and MTI-Net
rows with normals and edges on NYUDv2); every other network predicts them with an ordinary head;
the evaluator, Delta_MTL and the validation loss that selects the model leave them out."""

import json

import pytest
import torch

from helpers import run
from medmtl.data.nyudv2 import nyudv2_tasks
from medmtl.errors import ConfigError
from medmtl.models.heads import shape_output, upsample_to
from medmtl.tasks import evaluated, mark_auxiliary

MAIN, AUXILIARY = ["semseg", "depth"], ["normals", "edge"]
OUTPUTS = {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}


def survey_tasks():
    return mark_auxiliary(nyudv2_tasks("nyud_mt", MAIN + AUXILIARY), AUXILIARY)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_marking_refuses_unknown_names_and_a_task_set_with_nothing_to_evaluate():
    tasks = nyudv2_tasks("nyud_mt", MAIN + AUXILIARY)
    assert [t.name for t in evaluated(mark_auxiliary(tasks, AUXILIARY))] == MAIN
    with pytest.raises(ConfigError, match=r"names \['normal'\], which are not among the tasks"):
        mark_auxiliary(tasks, ["normal"])
    with pytest.raises(ConfigError, match="makes every task auxiliary"):
        mark_auxiliary(tasks, MAIN + AUXILIARY)


def test_pad_net_gives_auxiliary_tasks_initial_predictions_that_feed_the_distillation_only():
    """Counts from the survey code's layer list (as the main PAD-Net test) with T = 4 initial heads
    and 2 distilled tasks, each distillation reading the 3 others; an auxiliary output is its
    initial prediction, not deep-supervised a second time."""
    from medmtl.models.padnet import PADNet

    torch.manual_seed(0)
    model = PADNet(survey_tasks(), backbone="hrnet_tiny", width=32, input_normalization="none").eval()
    c, w = 8 + 16 + 32 + 64, 32

    def bottleneck(i, planes):
        return i * planes + 2 * planes + 9 * planes * planes + 2 * planes + planes * 4 * planes + 2 * 4 * planes

    def pair(i):
        return bottleneck(i, w // 4) + bottleneck(w, w // 4) + ((i * w + 2 * w) if i != w else 0)

    assert count(model.initial_features) == 4 * pair(c)
    assert count(model.initial_predictions) == sum(w * k + k for k in OUTPUTS.values())
    assert count(model.distillation) == 2 * 3 * 2 * 9 * w * w
    assert count(model.final) == sum(pair(w) + w * OUTPUTS[k] + OUTPUTS[k] for k in MAIN)
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(image)
        features = model.backbone(image)
        for name in AUXILIARY:
            initial = model.initial_predictions[name](model.initial_features[name](features))
            expected = shape_output(upsample_to(initial, (64, 64)), model.task_by_name[name])
            torch.testing.assert_close(out[name], expected)
            assert model.deep_supervision(name) == []
    assert [len(model.deep_supervision(name)) for name in MAIN] == [1, 1]
    model(image)["normals"].sum().backward()  # an auxiliary loss reaches the initial head, not the distillation
    assert all(p.grad is None for p in model.distillation.parameters())
    assert all(p.grad is not None for p in model.initial_features["normals"].parameters())


def test_mti_net_propagates_auxiliary_tasks_at_every_scale_and_distils_only_the_others():
    from medmtl.models.mtinet import MTINet

    torch.manual_seed(0)
    model = MTINet(survey_tasks(), backbone="hrnet_tiny", input_normalization="none").eval()
    c = [8, 16, 32, 64]
    assert count(model.distillation) == sum(2 * 3 * 2 * 9 * c[s] ** 2 for s in range(4))
    total = sum(c)
    assert count(model.final) == sum(total * total + total + 2 * total + total * OUTPUTS[k] + OUTPUTS[k] for k in MAIN)
    assert count(model.initial_predictions) == sum(c[s] * k + k for s in range(4) for k in OUTPUTS.values())
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    for name in AUXILIARY:  # the finest initial prediction is the output, the three coarser ones deep-supervised
        assert out[name].shape[-2:] == (64, 64) and len(model.deep_supervision(name)) == 3
    assert [len(model.deep_supervision(name)) for name in MAIN] == [4, 4]


def tiny_survey_run(tmp_path, arm: str, extra=()):
    overrides = [
        "experiment=nyudv2_survey_table5",
        "preset=tiny",
        f"nyud_arm={arm}",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
    ]
    return run("train.py", overrides, tmp_path)


@pytest.mark.parametrize("arm", ["padnet_hrnet18", "mtinet"])
def test_the_surveys_decoder_focused_rows_train_with_auxiliary_normals_and_edges_and_score_only_the_others(tmp_path, arm):
    done = tiny_survey_run(tmp_path, arm)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["task_metrics"] == {"semseg": "semseg_miou", "depth": "depth_rmse"}
    assert not [k for k in record["test"] if k.startswith(("normals", "edge"))]
    logged = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss/normals_epoch", "train/loss/edge_epoch"} <= set(logged)  # trained


def test_the_validation_loss_sums_only_the_evaluated_tasks(tmp_path):
    """val/loss (model selection) = val/loss/semseg + val/loss/depth; the auxiliary losses are logged beside it."""
    done = tiny_survey_run(
        tmp_path,
        "mtl_baseline",
        ["data.val_fraction=0.25", *(f"data.{k}" for k in ("tasks=[semseg,depth,normals]", "auxiliary_tasks=[normals]"))],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import csv

    rows = [r for r in csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()) if r.get("val/loss")]
    assert rows
    for row in rows:
        assert float(row["val/loss"]) == pytest.approx(float(row["val/loss/semseg"]) + float(row["val/loss/depth"]), rel=1e-6)
        assert float(row["val/loss/normals"]) > 0


def test_single_task_baselines_refuse_auxiliary_tasks(tmp_path):
    done = tiny_survey_run(tmp_path, "stl_resnet50", ["data.tasks=[semseg,depth,normals]", "data.auxiliary_tasks=[normals]"])
    assert done.returncode == 2
    assert "one network per task" in done.stderr and "Traceback" not in done.stderr
