"""The scene half trains through Lightning on the synthetic NYUDv2: every strategy on MTAN, and every
scene architecture with the strategy families (loss weighting, Jacobian, representation, per-task
optimizers, single-task); the test stage reports the dataset-level scene metrics."""

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train, fit_briefly, options
from medmtl.catalogue import needs_linear_readout
from medmtl.data.nyudv2_synthetic import SyntheticNYUDv2DataModule
from medmtl.module import MultiTaskModule, StrategyNotApplicable

SCENE_MODELS = ["mtl_baseline", "cross_stitch", "nddr_cnn", "mtan", "segnet_mtan", "padnet", "mtinet"]
SCENE_MODELS += ["mmoe", "cgc", "ple", "dselect_k", "ltb"]  # LibMTL's mixtures
FAMILIES = ["vanilla", "pcgrad", "mgda_ub", "mtl_io", "stl"]


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    return tmp_path_factory.mktemp("nyud") / "twin"


def fit(root, model_name: str, optim_name: str, tmp_path, test: bool = False, val_fraction: float | None = None):
    """``val_fraction``: default none, as the papers' NYUDv2 protocol, except for a strategy that
    reads validation batches (Auto-Lambda): a quarter of the eight training images. Batches of two
    images (the ASPP heads' batch norm needs two per forward), four for the strategies that halve
    each batch (MoDo, SDMGrad, MOML): every run makes two iterations or more."""
    cfg = compose_train([f"model={model_name}", "preset=tiny", f"optim={optim_name}"])
    strategy = instantiate(cfg.optim.strategy)
    if val_fraction is None:
        val_fraction = 0.25 if strategy.uses_validation_batches else 0.0
    dm = SyntheticNYUDv2DataModule(
        str(root),
        layout="nyud_mt",
        synthetic={"n_train": 8, "n_val": 2, "size": [32, 64]},
        tasks=["semseg", "depth", "normals", "edge"],
        batch_size=4 if strategy.halves_batches else 2,
        eval_batch_size=2,
        augment="survey",
        val_fraction=val_fraction,
    )
    torch.manual_seed(0)
    module = MultiTaskModule(
        model=instantiate(cfg.model),
        strategy=strategy,
        tasks=dm.tasks,
        optimizer=instantiate(cfg.optim.optimizer),
        input_keys=dm.input_keys,
    )
    return fit_briefly(module, dm, tmp_path, test)


@pytest.mark.slow
@pytest.mark.parametrize("optim_name", [o for o in options("optim") if not needs_linear_readout(o)])  # not on dense heads
def test_every_strategy_trains_mtan_on_four_scene_tasks(optim_name, nyud_root, tmp_path):
    fit(nyud_root, "mtan", optim_name, tmp_path)


@pytest.mark.parametrize(
    "model_name,optim_name",
    [pytest.param(m, o, marks=[] if o == "vanilla" else [pytest.mark.slow]) for m in SCENE_MODELS for o in FAMILIES],
)
def test_every_scene_architecture_trains_with_each_strategy_family(model_name, optim_name, nyud_root, tmp_path):
    """Equal weights on every network by default; the other families in the slow run (CI runs both)."""
    fit(nyud_root, model_name, optim_name, tmp_path)


def test_a_strategy_that_reads_validation_batches_is_refused_without_a_validation_split(nyud_root, tmp_path):
    with pytest.raises(StrategyNotApplicable, match="validation batches, and this data config has no validation split"):
        fit(nyud_root, "mtl_baseline", "auto_lambda", tmp_path, val_fraction=0.0)


def test_the_test_stage_reports_dataset_level_scene_metrics(nyud_root, tmp_path):
    metrics = fit(nyud_root, "padnet", "vanilla", tmp_path, test=True)
    expected = {
        "semseg_miou",
        "semseg_pixel_acc",
        "depth_abs_err",
        "depth_rel_err",
        "depth_rmse",
        "normals_angle_mean",
        "normals_angle_median",
        "normals_within_11_25",
        "normals_within_22_5",
        "normals_within_30",
        "edge_odsf",
    }
    assert {f"test/{m}" for m in expected} <= set(metrics)
    assert 0 <= metrics["test/semseg_miou"] <= 1 and 0 <= metrics["test/normals_angle_mean"] <= 180
