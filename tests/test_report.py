"""Report tables from a fabricated sweep: statistics checked by hand and against scipy."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from helpers import PROJECT_ROOT
from medmtl.analysis.report import build_table, collect, write_report
from medmtl.analysis.stats import delta_mtl
from medmtl.entry import write_failure

RESULTS = {  # method -> fold -> (auc, dice_od, fovea_error_px)
    "stl": {0: (0.80, 0.90, 20.0), 1: (0.82, 0.91, 22.0), 2: (0.78, 0.89, 18.0)},
    "mtl_io": {0: (0.90, 0.92, 19.0), 1: (0.91, 0.93, 21.0), 2: (0.89, 0.90, 17.0)},
    "vanilla": {0: (0.85, 0.91, 25.0), 1: (0.88, 0.90, 27.0)},  # fold 2 missing
}


@pytest.fixture
def sweep(tmp_path):
    job = 0
    for method, folds in RESULTS.items():
        for fold, (auc, dice, error) in folds.items():
            folder = tmp_path / str(job)
            (folder / ".hydra").mkdir(parents=True)
            (folder / ".hydra" / "overrides.yaml").write_text(f"- optim={method}\n- data.fold={fold}\n")
            record = {
                "test": {"auc": auc, "dice_od": dice, "fovea_error_px": error, "loss": 1.0},
                "strategy": method,
                "model": "UNetVGG16",
                "fold": fold,
                "protocol": "cv",
                "seed": 42,
                "num_parameters": 100,
                "seconds_per_iteration": 0.5,
            }
            (folder / "metrics.json").write_text(json.dumps(record))
            job += 1
    crashed = tmp_path / str(job)
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / ".hydra" / "overrides.yaml").write_text("- optim=vanilla\n- data.fold=2\n")
    diverged = tmp_path / str(job + 1)
    (diverged / ".hydra").mkdir(parents=True)
    (diverged / ".hydra" / "overrides.yaml").write_text("- optim=vanilla\n- data.fold=2\n- optim.optimizer.lr=1\n")
    write_failure(diverged, "non-finite values", "Training stopped at iteration 3 (epoch 0): the loss of task 'od' is NaN.", 3)
    return tmp_path


def test_table_statistics(sweep):
    collection = collect(sweep)
    table = build_table(collection)
    assert table.methods == ["mtl_io", "stl", "vanilla"]
    assert table.best["auc"] == "mtl_io" and table.best["fovea_error_px"] == "mtl_io"
    # paired t-test, best (mtl_io) against stl on AUC, by hand: t = mean(d) / (sd(d) / sqrt(n))
    d = np.array([0.90 - 0.80, 0.91 - 0.82, 0.89 - 0.78])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert table.p_values[("stl", "auc")] == pytest.approx(2 * stats.t.sf(abs(t), df=2))
    # vanilla is paired on the two folds it has
    assert table.p_values[("vanilla", "auc")] == pytest.approx(stats.ttest_rel([0.90, 0.91], [0.85, 0.88]).pvalue)
    # a constant difference (fovea error: vanilla is 6 px worse on both folds) has no t statistic
    assert math.isnan(table.p_values[("vanilla", "fovea_error_px")])
    assert ("stl", "parameters") not in table.p_values, "no significance test on resources"
    assert table.missing == {"mtl_io": [], "stl": [], "vanilla": ["fold 2"]}
    assert len(collection.failed) == 2
    # Delta_MTL by hand: mean of +dAUC/AUC, +dDice/Dice, -dError/Error (in percent)
    stl = [np.mean([v[i] for v in RESULTS["stl"].values()]) for i in range(3)]
    io = [np.mean([v[i] for v in RESULTS["mtl_io"].values()]) for i in range(3)]
    expected = 100 * np.mean([(io[0] - stl[0]) / stl[0], (io[1] - stl[1]) / stl[1], -(io[2] - stl[2]) / stl[2]])
    assert table.delta["mtl_io"] == pytest.approx(expected)
    assert table.delta["stl"] == pytest.approx(0.0)


def test_delta_mtl_sign_convention():
    assert delta_mtl({"auc": 0.9, "error": 9.0}, {"auc": 0.9, "error": 10.0}, ["auc", "error"]) == pytest.approx(5.0)


def test_report_files_name_missing_and_failed_runs(sweep):
    output = write_report(sweep)
    markdown = (output / "results.md").read_text()
    assert "**90.00 ± 1.00**" in markdown  # mtl_io AUC in percent, bold as the best
    assert "vanilla: missing fold 2" in markdown
    assert "unfinished (no metrics.json, no failure record)" in markdown
    assert "failed (non-finite values): " in markdown and "the loss of task 'od' is NaN" in markdown
    assert r"\textbf{90.00 $\pm$ 1.00}" in (output / "results.tex").read_text()
    assert "p_value_vs_best" in (output / "results.csv").read_text().splitlines()[0]


def test_report_cli_on_an_empty_folder_is_one_sentence(tmp_path):
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "src" / "report.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "No finished run" in result.stderr and "Traceback" not in result.stderr


def test_pooled_roc_concatenates_every_run_of_a_method(sweep):
    from sklearn.metrics import roc_auc_score

    from medmtl.analysis.figures import plot_roc, pooled_predictions

    rng = np.random.default_rng(0)
    runs = collect(sweep).runs
    expected = {}
    for run in runs:
        labels = rng.integers(0, 2, 10)
        scores = labels * 0.3 + rng.random(10)
        np.savez(run.folder / "predictions.npz", label=labels, p_combined=scores)
        parts = expected.setdefault(run.method, ([], []))
        parts[0].append(labels)
        parts[1].append(scores)
    pooled = pooled_predictions(runs)
    for method, (labels, scores) in expected.items():
        got_labels, got_scores = pooled[method]
        assert len(got_labels) == 10 * len(labels)
        assert roc_auc_score(got_labels, got_scores) == pytest.approx(
            roc_auc_score(np.concatenate(labels), np.concatenate(scores))
        )
    path = plot_roc(runs, sweep / "roc.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_epoch_curves_average_runs_per_method(sweep):
    import pandas as pd

    from medmtl.analysis.figures import epoch_curves, plot_curves

    runs = collect(sweep).runs
    for i, run in enumerate(runs):
        (run.folder / "csv").mkdir()
        rows = [{"epoch": e, "step": e, "val/loss": 1.0 / (e + 1) + i} for e in range(3)]
        rows.append({"epoch": 0, "step": 0, "train/loss": 5.0})  # a row without the column
        pd.DataFrame(rows).to_csv(run.folder / "csv" / "metrics.csv", index=False)
    curves = epoch_curves(runs)
    offsets = {m: [i for i, r in enumerate(runs) if r.method == m] for m in curves}
    for method, values in curves.items():
        expected = np.array([[1.0 / (e + 1) + i for e in range(3)] for i in offsets[method]])
        np.testing.assert_allclose(values, expected)
    assert plot_curves(runs, sweep / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_report_draws_task_balance_plots_for_runs_with_diagnostics(sweep):
    import pandas as pd

    run = collect(sweep).runs[0]
    rows = [
        (it, layer, task, 1e-3, 1e-5) for it in (0, 50) for layer in ("encoder.a", "decoder.b") for task in ("od", "glaucoma")
    ]
    pd.DataFrame(rows, columns=["iteration", "layer", "task", "grad", "contribution"]).to_csv(
        run.folder / "diagnostics.csv", index=False
    )
    output = write_report(sweep)
    name = f"{run.method}_{run.pair_key}".replace(" ", "")
    assert (output / f"balance_layers_{name}.png").is_file() and (output / f"balance_steps_{name}.png").is_file()


def test_scene_report_ranks_declared_lower_is_better_metrics_and_draws_the_scene_figure(tmp_path):
    """Two methods on scene tasks: the mean angle is better when lower (declared by the evaluator,
    not named so), mIoU when higher; Delta_MTL by hand; the overlay shows the scene examples."""
    rows = {"stl": {0: (0.40, 20.0), 1: (0.42, 21.0)}, "vanilla": {0: (0.44, 22.0), 1: (0.46, 23.1)}}
    rng = np.random.default_rng(0)
    for job, (method, seeds) in enumerate((m, s) for m, s in rows.items()):
        for seed, (miou, angle) in seeds.items():
            folder = tmp_path / f"{job}_{seed}"
            (folder / ".hydra").mkdir(parents=True)
            (folder / ".hydra" / "overrides.yaml").write_text(f"- optim={method}\n- seed={seed}\n")
            record = {
                "test": {"semseg_miou": miou, "normals_angle_mean": angle},
                "strategy": method,
                "model": "MTAN",
                "seed": seed,
                "protocol": "official",
                "task_metrics": {"semseg": "semseg_miou", "normals": "normals_angle_mean"},
                "lower_is_better": ["normals_angle_mean"],
                "num_parameters": 10,
                "flops_per_sample": 2.5e9,
            }
            (folder / "metrics.json").write_text(json.dumps(record))
            normals = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
            np.savez(
                folder / "predictions.npz",
                example_image=rng.integers(0, 255, (1, 8, 8, 3), dtype=np.uint8),
                example_index=np.array([0]),
                example_semseg_pred=rng.integers(0, 13, (1, 8, 8)),
                example_semseg_true=rng.integers(-1, 13, (1, 8, 8)),
                example_normals_pred=normals,
                example_normals_true=normals / np.linalg.norm(normals, axis=1, keepdims=True),
            )
    table = build_table(collect(tmp_path))
    assert table.best["semseg_miou"] == "vanilla" and table.best["normals_angle_mean"] == "stl"
    expected = 100 * ((0.45 - 0.41) / 0.41 - (22.55 - 20.5) / 20.5) / 2
    assert table.delta["vanilla"] == pytest.approx(expected)
    output = write_report([tmp_path])
    assert (output / "overlay.png").is_file()
    assert (output / "pareto.png").is_file(), "two task metrics: the trade-off plot"
    assert "2.50 ± 0.00" in (output / "results.md").read_text()  # GFLOPs


def test_validation_metric_curves_average_each_methods_runs_per_epoch(tmp_path):
    """Hervella et al. 2024's Fig. 6 from the CSV logs: mean over a method's runs per epoch."""
    import pandas as pd

    from medmtl.analysis.figures import epoch_curves, plot_metric_curves
    from medmtl.analysis.report import Run

    runs = []
    for seed, values in enumerate(([0.1, 0.2, 0.3], [0.3, 0.4, 0.5])):
        folder = tmp_path / f"run{seed}"
        (folder / "csv").mkdir(parents=True)
        rows = [{"epoch": e, "step": e, "val/semseg_miou": v} for e, v in enumerate(values)]
        rows += [{"epoch": e, "step": e, "train/loss": 1.0} for e in range(3)]  # rows without the column
        pd.DataFrame(rows).to_csv(folder / "csv" / "metrics.csv", index=False)
        runs.append(Run(folder, "mao", f"seed {seed}", {}, {}))
    curves = epoch_curves(runs, "val/semseg_miou")
    np.testing.assert_allclose(curves["mao"].mean(axis=0), [0.2, 0.3, 0.4])
    assert plot_metric_curves(runs, tmp_path / "curves.png", ["semseg_miou", "depth_rmse"]).is_file()
    assert plot_metric_curves(runs, tmp_path / "none.png", ["depth_rmse"]) is None


def test_arms_label_runs_only_where_strategy_and_model_would_merge_them(tmp_path):
    jobs = [
        ("stl", "MTLBaseline", {"nyud_arm": "stl_resnet50"}),
        ("stl", "MTLBaseline", {"nyud_arm": "stl_hrnet18"}),
        ("vanilla", "MTAN", {"nyud_arm": "mtan"}),
        ("vanilla", "MTINet", {"nyud_arm": "mtinet"}),
    ]
    for job, (strategy, model, arms) in enumerate(jobs):
        folder = tmp_path / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
        record = {
            "test": {"semseg_miou": 0.1 * (job + 1)},
            "strategy": strategy,
            "model": model,
            "seed": 0,
            "protocol": "official",
            "arms": arms,
        }
        (folder / "metrics.json").write_text(json.dumps(record))
    methods = sorted({run.method for run in collect(tmp_path).runs})
    assert methods == [
        "stl (MTLBaseline, nyud_arm=stl_hrnet18)",
        "stl (MTLBaseline, nyud_arm=stl_resnet50)",
        "vanilla (MTAN, nyud_arm=mtan)",
        "vanilla (MTINet, nyud_arm=mtinet)",
    ]


def test_shares_are_shown_in_percent_and_errors_as_they_are():
    from medmtl.analysis.report import in_percent

    assert all(
        in_percent(m)
        for m in (
            "auc",
            "dice_od",
            "semseg_miou",
            "semseg_pixel_acc",
            "ap_anger",
            "categories_map",
            "categories_mf1",
            "retinopathy_acc",
        )
    )
    assert not any(in_percent(m) for m in ("depth_rmse", "dimensions_mae", "normals_angle_mean", "edge_odsf", "fovea_error_px"))


def test_delta_mtl_interval_and_mean_rank_by_hand(sweep):
    """The 95% interval is Student's over the per-fold Delta_MTL (each fold against stl's means),
    t_{0.975, 2} = 4.3027 from a t table; mean ranks over auc, dice_od, fovea_error_px by hand."""
    table = build_table(collect(sweep))
    stl = [np.mean([v[i] for v in RESULTS["stl"].values()]) for i in range(3)]
    signs = (1, 1, -1)
    per_fold = [100 * np.mean([s * (v[i] - stl[i]) / stl[i] for i, s in enumerate(signs)]) for v in RESULTS["mtl_io"].values()]
    half = 4.302653 * np.std(per_fold, ddof=1) / math.sqrt(3)
    low, high = table.delta_interval["mtl_io"]
    assert (low, high) == pytest.approx((np.mean(per_fold) - half, np.mean(per_fold) + half), rel=1e-5)
    assert np.mean(per_fold) == pytest.approx(table.delta["mtl_io"])
    # means: auc mtl_io .90 > vanilla .865 > stl .80; dice_od mtl_io .9167 > vanilla .905 > stl .90;
    # fovea error (lower better): mtl_io 19 < stl 20 < vanilla 26
    assert table.ranks == pytest.approx({"mtl_io": 1.0, "vanilla": (2 + 2 + 3) / 3, "stl": (3 + 3 + 2) / 3})
    text = (write_report(sweep) / "results.md").read_text()
    assert f"{table.delta['mtl_io']:+.2f} [{low:+.2f}, {high:+.2f}]" in text and "mean rank" in text


def test_pareto_front_by_hand():
    from medmtl.analysis.stats import pareto_front

    points = {
        "a": {"auc": 0.90, "fovea_error_px": 20.0},  # best AUC
        "b": {"auc": 0.85, "fovea_error_px": 15.0},  # best error
        "c": {"auc": 0.85, "fovea_error_px": 21.0},  # dominated by a and by b
        "d": {"auc": 0.90, "fovea_error_px": 22.0},  # dominated by a (equal AUC, worse error)
    }
    assert sorted(pareto_front(points, ["auc", "fovea_error_px"])) == ["a", "b"]


def test_a_truncated_metrics_json_is_left_out_and_named(sweep):
    (sweep / "0" / "metrics.json").write_text('{"test": {"auc": 0.8')
    markdown = (write_report(sweep) / "results.md").read_text()
    assert "unreadable metrics.json (truncated or not JSON), left out: " in markdown and str(sweep / "0") in markdown


def test_runs_of_different_datasets_are_refused_in_one_sentence(sweep):
    for job, data in (("0", "RefugeDataModule"), ("1", "IdridDataModule")):
        record = json.loads((sweep / job / "metrics.json").read_text())
        (sweep / job / "metrics.json").write_text(json.dumps(record | {"data": data}))
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / "report.py"), str(sweep)], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "The runs come from different datasets (RefugeDataModule (1 runs), IdridDataModule (1 runs))" in result.stderr
