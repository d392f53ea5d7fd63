"""Report figures from fabricated runs: overlays (Pascal et al. 2022 Fig. 4), learning-rate sensitivity
(Figs. 2-3), several sweeps in one table; and the examples the REFUGE evaluator keeps."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medmtl.analysis.lr_sensitivity import best_validation_values, sensitivity_frame
from medmtl.analysis.overlays import pick_example
from medmtl.analysis.report import build_table, collect, to_markdown, write_report
from medmtl.metrics.refuge import RefugeEvaluator


def _job(folder, strategy, fold, lr=1e-3, model="UNetVGG16", auc=0.8, log=None, examples=None):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- optim={strategy}\n")
    record = {"test": {"auc": auc}, "strategy": strategy, "model": model, "fold": fold, "protocol": "cv", "seed": 42, "lr": lr}
    (folder / "metrics.json").write_text(json.dumps(record))
    if log is not None:
        (folder / "csv").mkdir()
        pd.DataFrame(log).to_csv(folder / "csv" / "metrics.csv", index=False)
    if examples is not None:
        np.savez(
            folder / "predictions.npz",
            label=np.array([0, 1]),
            p_combined=np.array([0.2, 0.9]),
            **{f"example_{k}": v for k, v in examples.items()},
        )


def test_best_validation_values_take_the_best_epoch_of_each_metric(tmp_path):
    log = {
        "epoch": [0, 1, 2],
        "val/auc": [0.6, 0.9, 0.7],
        "val/fovea_error_grid": [9.0, 4.0, 6.0],
        "val/loss/od": [0.5, 0.2, 0.3],
    }
    _job(tmp_path / "0", "mtl_io", 0, log=log)
    assert best_validation_values(tmp_path / "0") == {"auc": 0.9, "fovea_error_grid": 4.0, "loss/od": 0.2}


def test_lr_sweep_labels_methods_by_lr_and_draws_the_sensitivity_figures(tmp_path):
    for job, (strategy, lr, fold, peak) in enumerate(
        [("stl", 1e-3, 0, 0.7), ("stl", 1e-3, 1, 0.8), ("stl", 1e-4, 0, 0.6), ("mtl_io", 1e-3, 0, 0.9), ("mtl_io", 1e-4, 0, 0.85)]
    ):
        log = {"epoch": [0, 1], "val/auc": [0.5, peak], "val/loss/od": [1.0, 1.0 - peak]}
        _job(tmp_path / str(job), strategy, fold, lr=lr, log=log)
    collection = collect(tmp_path)
    assert {r.method for r in collection.runs} == {"stl (lr=0.001)", "stl (lr=0.0001)", "mtl_io (lr=0.001)", "mtl_io (lr=0.0001)"}
    frame = sensitivity_frame(collection.runs)
    stl = frame[(frame.method == "stl") & (frame.lr == 1e-3)]
    assert stl["auc"].mean() == pytest.approx(0.75) and stl["loss/od"].mean() == pytest.approx(0.25)
    output = write_report(tmp_path, baseline="stl (lr=0.001)")
    assert (output / "lr_metrics.png").is_file() and (output / "lr_losses.png").is_file()


def test_two_sweeps_in_one_table_with_the_model_in_the_label(tmp_path):
    _job(tmp_path / "a" / "0", "stl", 0, auc=0.8)
    _job(tmp_path / "a" / "1", "mtl_io", 0, auc=0.9)
    _job(tmp_path / "b" / "0", "stl", 0, model="Res34UNet", auc=0.85)
    table = build_table(collect([tmp_path / "a", tmp_path / "b"]), baseline="stl (UNetVGG16)")
    assert table.methods == ["mtl_io (UNetVGG16)", "stl (Res34UNet)", "stl (UNetVGG16)"]
    assert table.delta["mtl_io (UNetVGG16)"] == pytest.approx(100 * (0.9 - 0.8) / 0.8)
    # with two "stl" methods the bare baseline is ambiguous: no Delta_MTL rather than a guess
    assert build_table(collect([tmp_path / "a", tmp_path / "b"]), baseline="stl").delta == {}


def _examples(od_pred_second):
    truth = np.zeros((2, 8, 8), bool)
    truth[:, 2:6, 2:6] = True
    od_pred = np.stack([truth[0], od_pred_second])
    return {
        "index": np.array([3, 7]),
        "label": np.array([1, 1]),
        "image": np.zeros((2, 8, 8, 3), np.uint8),
        "od_pred": od_pred,
        "oc_pred": truth.copy(),
        "od_true": truth,
        "oc_true": truth,
        "fovea_pred": np.array([[4.0, 4.0], [4.0, 4.0]]),
        "fovea_true": np.array([[4.0, 4.0], [5.0, 5.0]]),
    }


def test_overlay_shows_the_glaucomatous_image_where_the_methods_differ_most(tmp_path):
    truth = _examples(np.zeros((8, 8), bool))["od_true"][1]
    examples = {"stl": _examples(np.zeros((8, 8), bool)), "mtl_io": _examples(truth)}
    # image 0: both perfect; image 1: stl misses the disc (OD Dice 0), mtl_io is perfect
    assert pick_example(examples) == 1
    _job(tmp_path / "0", "stl", 0, examples=examples["stl"])
    _job(tmp_path / "1", "mtl_io", 0, auc=0.9, examples=examples["mtl_io"])
    output = write_report(tmp_path)
    assert (output / "overlay.png").is_file()


def test_evaluator_keeps_the_first_examples_of_each_class():
    evaluator = RefugeEvaluator(np.array([0.3, 0.7]), np.array([0, 1]), examples_per_class=1)
    size = 16
    for labels in ([0, 0], [1, 0], [1, 1]):
        n = len(labels)
        batch = {
            "image": torch.rand(n, 3, size, size),
            "od": torch.zeros(n, size, size),
            "oc": torch.zeros(n, size, size),
            "glaucoma": torch.tensor(labels, dtype=torch.float32),
            "fovea_xy": torch.full((n, 2), 8.0),
            "original_wh": torch.full((n, 2), 64.0),
            "index": torch.arange(n) + 10 * len(evaluator.records["index"]),
        }
        outputs = {
            "od": torch.full((n, size, size), 5.0),
            "oc": torch.full((n, size, size), -5.0),
            "fovea": torch.zeros(n, size, size),
            "glaucoma": torch.zeros(n),
        }
        evaluator.update(outputs, batch)
    kept = evaluator.predictions()
    assert kept["example_label"].tolist() == [0, 1] and kept["example_index"].tolist() == [0, 20]
    assert kept["example_image"].shape == (2, size, size, 3) and kept["example_image"].dtype == np.uint8
    assert kept["example_od_pred"].all() and not kept["example_oc_pred"].any()  # logits +5 / -5 after threshold


def test_report_notebook_shows_the_table_and_figures_of_a_sweep(tmp_path):
    import matplotlib

    from helpers import PROJECT_ROOT

    matplotlib.use("Agg")
    truth = _examples(np.zeros((8, 8), bool))
    _job(tmp_path / "0", "stl", 0, examples=truth)
    _job(tmp_path / "1", "mtl_io", 0, auc=0.9, examples=truth)
    notebook = json.loads((PROJECT_ROOT / "notebooks" / "open_report.ipynb").read_text())
    code = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    exec(code[0], namespace)  # imports (its sweep lookup finds nothing here)
    namespace["sweep"] = tmp_path
    for cell in code[1:]:
        exec(cell, namespace)
    assert (tmp_path / "report" / "results.md").is_file()
    assert {p.name for p in namespace["figures"]} >= {"roc.png", "overlay.png"}


def test_delta_mtl_averages_one_declared_metric_per_task(tmp_path):
    """Survey Eq. 10: (1/T) sum over tasks; auc_fc (a second glaucoma metric) must not count."""
    for job, (strategy, auc, auc_fc, error) in enumerate([("stl", 0.80, 0.80, 10.0), ("mtl_io", 0.88, 0.40, 9.0)]):
        folder = tmp_path / str(job)
        _job(folder, strategy, 0, auc=auc)
        record = json.loads((folder / "metrics.json").read_text())
        record["test"] |= {"auc_fc": auc_fc, "fovea_error_px": error}
        record["task_metrics"] = {"glaucoma": "auc", "fovea": "fovea_error_px"}
        (folder / "metrics.json").write_text(json.dumps(record))
    table = build_table(collect(tmp_path))
    assert table.delta_metrics == ["auc", "fovea_error_px"]
    assert table.delta["mtl_io"] == pytest.approx(100 * ((0.88 - 0.80) / 0.80 + (10.0 - 9.0) / 10.0) / 2)


def test_delta_mtl_counts_only_the_task_metrics_among_the_shown_columns(tmp_path):
    """A joint network on three of four tasks beside single-task runs of all four: ``--metrics`` on
    the three gives its Delta_MTL over them (without the choice, the fourth task's absence makes it NaN)."""
    rows = [("ga", {"a": 0.8, "b": 0.6, "c": 0.9, "d": 0.7}), ("vanilla", {"a": 0.88, "b": 0.57, "c": 0.9})]
    for job, (strategy, aucs) in enumerate(rows):
        folder = tmp_path / str(job)
        _job(folder, strategy, 0, auc=0.0)
        record = json.loads((folder / "metrics.json").read_text())
        record["test"] = {f"{task}_auc": value for task, value in aucs.items()}
        record["task_metrics"] = {task: f"{task}_auc" for task in aucs}
        (folder / "metrics.json").write_text(json.dumps(record))
    shown = ["a_auc", "b_auc", "c_auc"]
    table = build_table(collect(tmp_path), metrics=shown, baseline="ga")
    assert table.delta_metrics == shown
    assert table.delta["vanilla"] == pytest.approx(100 * ((0.88 - 0.8) / 0.8 + (0.57 - 0.6) / 0.6 + 0.0) / 3)
    assert np.isnan(build_table(collect(tmp_path), baseline="ga").delta["vanilla"])
    # a baseline that names no method (labels gain ", lr=..." when the runs' learning rates differ) is said
    unresolved = build_table(collect(tmp_path), metrics=shown, baseline="ga (1 task)")
    assert unresolved.delta == {} and unresolved.unresolved_baselines == ["ga (1 task)"]
    assert "No Δ_MTL: the baseline 'ga (1 task)' names no single method" in to_markdown(unresolved, collect(tmp_path))


def test_runs_of_one_method_and_fold_never_overwrite_each_other(tmp_path):
    """Single-task runs of one strategy, one dataset each: their own metrics merge into one row,
    a metric several of them report (a mean over datasets) is left out and named."""
    for job, (flag, auc) in enumerate([("breastmnist", 0.8), ("pneumoniamnist", 0.9)]):
        folder = tmp_path / str(job)
        _job(folder, "ga", 0, auc=auc)
        record = json.loads((folder / "metrics.json").read_text())
        record["test"] = {f"{flag}_auc": auc, "auc_mean": auc}
        (folder / "metrics.json").write_text(json.dumps(record))
    table = build_table(collect(tmp_path))
    assert table.values[("ga", "breastmnist_auc")] == {"fold 0": 0.8}
    assert table.values[("ga", "pneumoniamnist_auc")] == {"fold 0": 0.9}
    assert table.values[("ga", "auc_mean")] == {} and table.conflicts == [("ga", "auc_mean", "fold 0")]


def test_delta_mtl_against_baselines_that_share_the_tasks_out(tmp_path):
    """Roy 2025: a grading classifier and a lesion segmenter are together the single-task
    baseline of the multi-task network; each task's baseline value comes from the one reporting it."""

    def job(name, model, test, task_metrics):
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text("- optim=vanilla\n")
        record = {"test": test, "strategy": "vanilla", "model": model, "seed": 0, "lr": 3e-4, "task_metrics": task_metrics}
        (folder / "metrics.json").write_text(json.dumps(record))

    job("0", "ResNetClassifier", {"retinopathy_acc": 0.50}, {"retinopathy": "retinopathy_acc"})
    job("1", "DeepLabV3Plus", {"od_dice": 0.80}, {"od": "od_dice"})
    job("2", "MoEDeepLabV3Plus", {"retinopathy_acc": 0.55, "od_dice": 0.76}, {"retinopathy": "retinopathy_acc", "od": "od_dice"})
    table = build_table(collect(tmp_path), baseline=["vanilla (ResNetClassifier)", "vanilla (DeepLabV3Plus)"])
    assert table.delta_metrics == ["retinopathy_acc", "od_dice"]
    assert table.delta["vanilla (MoEDeepLabV3Plus)"] == pytest.approx(100 * ((0.55 - 0.5) / 0.5 + (0.76 - 0.8) / 0.8) / 2)
    assert np.isnan(table.delta["vanilla (ResNetClassifier)"])  # it has no od_dice
    # two baselines reporting one metric: no Delta_MTL rather than a guess
    assert build_table(collect(tmp_path), baseline=["vanilla (MoEDeepLabV3Plus)", "vanilla (DeepLabV3Plus)"]).delta == {}
