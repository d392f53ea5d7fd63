"""Dense scene metrics (NYUDv2) against hand computations and torchmetrics: perfect predictions
score perfectly, known errors give the hand-computed values, and a split accumulated in several
batches gives what one batch gives (dataset-level metrics, never per-batch means)."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from medmtl.data.nyudv2 import nyudv2_tasks
from medmtl.metrics.scene import DepthMetric, EdgeMetric, NormalsMetric, SemanticMetric
from medmtl.strategies.kpi import task_kpi


def rotate_about_x(vectors: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate (..., 3) vectors about the x axis by per-vector angles (degrees)."""
    angle = torch.deg2rad(degrees.double())
    c, s = torch.cos(angle), torch.sin(angle)
    x, y, z = vectors.double().unbind(-1)
    return torch.stack([x, c * y - s * z, s * y + c * z], dim=-1)


def test_semantic_miou_equals_torchmetrics_over_a_split_in_several_batches():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(-1, 6, (6, 12, 10), generator=g)  # -1: unlabelled
    logits = torch.randn(6, 6, 12, 10, generator=g)
    logits[:, 2] += 2 * (target == 2)  # some skill for one class
    ours = SemanticMetric(6, ignore_index=-1)
    for i in range(0, 6, 2):  # three batches
        ours.update(logits[i : i + 2], target[i : i + 2])
    reference = MulticlassJaccardIndex(num_classes=6, ignore_index=-1, average="macro")
    reference.update(logits.argmax(1), target)
    result = ours.compute()
    assert result["miou"] == pytest.approx(float(reference.compute()), abs=1e-6)
    labelled = target != -1
    assert result["pixel_acc"] == pytest.approx(float((logits.argmax(1) == target)[labelled].float().mean()), abs=1e-6)


def test_semantic_hand_example():
    # 2x2 image, classes 0..2: truth [[0, 0], [1, ignore]], prediction [[0, 1], [1, 2]]
    target = torch.tensor([[[0, 0], [1, -1]]])
    predicted = torch.tensor([[[0, 1], [1, 2]]])
    logits = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    metric = SemanticMetric(3, ignore_index=-1)
    metric.update(logits, target)
    result = metric.compute()
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 1, FP 1 -> 1/2; class 2 appears only at an ignored pixel: left out
    assert result["miou"] == pytest.approx(0.5)
    assert result["pixel_acc"] == pytest.approx(2 / 3)


def test_depth_errors_over_valid_pixels_only():
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(3, 8, 8, generator=g) * 5 + 0.5
    truth[:, :2] = 0.0  # invalid rows
    prediction = truth * 1.1
    prediction[:, :2] = 123.0  # garbage where the truth is invalid: must not count
    metric = DepthMetric()
    metric.update(prediction[:1], truth[:1])
    metric.update(prediction[1:], truth[1:])
    valid = truth[truth > 0].double()
    result = metric.compute()
    assert result["rel_err"] == pytest.approx(0.1, rel=1e-6)
    assert result["abs_err"] == pytest.approx(float(0.1 * valid.mean()), rel=1e-6)
    assert result["rmse"] == pytest.approx(float(0.1 * valid.pow(2).mean().sqrt()), rel=1e-6)


def test_normals_angles_by_hand():
    # 3 x 100 valid pixels at 5, 15 and 25 degrees from their truth, 50 invalid pixels
    truth = torch.nn.functional.normalize(torch.randn(350, 3, generator=torch.Generator().manual_seed(2)), dim=-1)
    # rotating about x keeps the angle only for vectors orthogonal to x: use those
    truth = torch.nn.functional.normalize(truth * torch.tensor([0.0, 1.0, 1.0]), dim=-1)
    degrees = torch.cat([torch.full((100,), 5.0), torch.full((100,), 15.0), torch.full((100,), 25.0), torch.zeros(50)])
    prediction = rotate_about_x(truth, degrees) * 3.0  # not unit length: the metric normalises
    truth[300:] = 0.0
    as_maps = lambda v: v.float().T.reshape(1, 3, 14, 25)
    metric = NormalsMetric()
    metric.update(as_maps(prediction), as_maps(truth))
    result = metric.compute()
    assert result["angle_mean"] == pytest.approx(15.0, abs=1e-3)
    assert result["angle_median"] == pytest.approx(15.0, abs=0.01)
    assert result["within_11_25"] == pytest.approx(1 / 3)
    assert result["within_22_5"] == pytest.approx(2 / 3)
    assert result["within_30"] == pytest.approx(1.0)


def test_edge_odsf_by_hand():
    truth = torch.zeros(1, 64, 64)
    truth[0, :, 10] = 1.0  # a vertical edge, 64 pixels
    logits = torch.full((1, 64, 64), -20.0)
    metric = EdgeMetric(thresholds=10)
    metric.update(torch.where(truth > 0, 20.0, -20.0), truth)
    assert metric.compute()["odsf"] == pytest.approx(1.0)

    metric.reset()
    shifted = logits.clone()
    shifted[0, :, 11] = 20.0  # one pixel off: within the tolerance radius (1 px at 64 x 64)
    metric.update(shifted, truth)
    assert metric.compute()["odsf"] == pytest.approx(1.0)

    metric.reset()
    half = logits.clone()
    half[0, :32, 10] = 20.0  # the upper half only: precision 1; recall: rows 0..32 are within 1 px
    metric.update(half, truth)
    recall = 33 / 64
    assert metric.compute()["odsf"] == pytest.approx(2 * recall / (1 + recall))

    metric.reset()
    far = logits.clone()
    far[0, :, 40] = 20.0  # far away: nothing matches
    metric.update(far, truth)
    assert metric.compute()["odsf"] == pytest.approx(0.0)


def perfect_outputs(tasks, batch):
    outputs = {}
    for task in tasks:
        target = batch[task.target_key]
        if task.kind == "semantic":
            one_hot = torch.nn.functional.one_hot(target.clamp_min(0), task.num_outputs).permute(0, 3, 1, 2).float()
            outputs[task.name] = 10 * one_hot
        elif task.kind == "edge":
            outputs[task.name] = torch.where(target > 0.5, 20.0, -20.0)
        else:
            outputs[task.name] = target.float().clone()
    return outputs


@pytest.mark.parametrize("layout", ["mtan", "nyud_mt"])
def test_ground_truth_scores_perfectly_on_the_synthetic_twin(layout, tmp_path):
    from medmtl.data.nyudv2_synthetic import SyntheticNYUDv2DataModule

    tasks = ["semseg", "depth", "normals"] + (["edge"] if layout == "nyud_mt" else [])
    dm = SyntheticNYUDv2DataModule(
        str(tmp_path / layout), layout=layout, synthetic={"n_train": 2, "n_val": 3, "size": [48, 64]}, tasks=tasks, augment="none"
    )
    dm.setup("test")
    evaluator = dm.make_evaluator()
    for batch in dm.test_dataloader():
        evaluator.update(perfect_outputs(dm.tasks, batch), batch)
    result = evaluator.compute()
    assert result["semseg_miou"] == pytest.approx(1.0) and result["semseg_pixel_acc"] == pytest.approx(1.0)
    assert result["depth_abs_err"] == 0 and result["depth_rel_err"] == 0 and result["depth_rmse"] == 0
    assert result["normals_angle_mean"] < 0.05 and result["normals_within_11_25"] == pytest.approx(1.0)
    if layout == "nyud_mt":
        assert result["edge_odsf"] == pytest.approx(1.0)
    assert set(evaluator.TASK_METRICS.values()) <= set(result)
    assert {"depth_rmse", "normals_angle_mean"} <= evaluator.LOWER_IS_BETTER
    assert "semseg_miou" not in evaluator.LOWER_IS_BETTER


def test_dtp_kpis_are_in_the_unit_interval_and_perfect_for_the_truth():
    tasks = {t.name: t for t in nyudv2_tasks("nyud_mt", ["semseg", "depth", "normals", "edge"])}
    g = torch.Generator().manual_seed(3)
    truth_normals = torch.nn.functional.normalize(torch.randn(2, 3, 6, 6, generator=g), dim=1)
    batch = {
        "semseg": torch.randint(-1, 40, (2, 6, 6), generator=g),
        "depth": torch.rand(2, 6, 6, generator=g) + 0.5,
        "normals": truth_normals,
        "edge": (torch.rand(2, 6, 6, generator=g) > 0.7).float(),
    }
    perfect = perfect_outputs(tasks.values(), batch)
    for name, task in tasks.items():
        assert float(task_kpi(task, perfect[name], batch)) == pytest.approx(1.0, abs=1e-4), name
    # depth at twice the truth: relative error 1 -> KPI 0; normals reversed: angle 180 -> KPI 0
    assert float(task_kpi(tasks["depth"], 2 * batch["depth"], batch)) == pytest.approx(0.0, abs=1e-6)
    assert float(task_kpi(tasks["normals"], -truth_normals, batch)) == pytest.approx(0.0, abs=1e-3)


def test_delta_mtl_knows_which_scene_metrics_are_lower_is_better():
    from medmtl.analysis.stats import delta_mtl

    lower = {"normals_angle_mean", "depth_rmse"}
    base = {"semseg_miou": 0.40, "depth_rmse": 0.60, "normals_angle_mean": 20.0}
    mine = {"semseg_miou": 0.44, "depth_rmse": 0.54, "normals_angle_mean": 22.0}
    # +10 %, +10 % (lower rmse), -10 % (larger angle): mean +3.33 %
    assert delta_mtl(mine, base, list(base), lower) == pytest.approx(100 * (0.1 + 0.1 - 0.1) / 3)
    assert not math.isclose(delta_mtl(mine, base, list(base)), delta_mtl(mine, base, list(base), lower))
