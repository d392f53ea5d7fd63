"""EMOTIC trains through Lightning with two inputs per batch: every strategy in the 2-task setting
(slow), the strategy families in the 26-task setting, the test stage's metrics; the encoders load
Places/ImageNet state dicts from local files."""

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train, fit_briefly, options, quiet_trainer
from medmtl.catalogue import needs_linear_readout
from medmtl.data.emotic_synthetic import SyntheticEmoticDataModule
from medmtl.errors import ConfigError
from medmtl.module import MultiTaskModule

FAMILIES = ["vanilla", "ga", "mtl_io", "mao", "pcgrad", "mgda_ub", "jd_upgrad", "stl"]


@pytest.fixture(scope="module")
def emotic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("emotic") / "twin"


def emotic_data(root, setting: str, tmp_path, **options) -> SyntheticEmoticDataModule:
    return SyntheticEmoticDataModule(
        str(root),
        synthetic={"n_train": 8, "n_val": 2, "n_test": 4, "size": [48, 64]},
        setting=setting,
        context_size=32,
        body_size=32,
        batch_size=4,
        eval_batch_size=8,
        cache_dir=str(tmp_path / "cache"),
        **options,
    )


def emotic_module(cfg, dm) -> MultiTaskModule:
    return MultiTaskModule(
        model=instantiate(cfg.model),
        strategy=instantiate(cfg.optim.strategy),
        tasks=dm.tasks,
        optimizer=instantiate(cfg.optim.optimizer),
        input_keys=dm.input_keys,
    )


def fit(root, setting: str, optim_name: str, tmp_path, test: bool = False):
    cfg = compose_train(["experiment=emotic_table2", "preset=tiny", f"optim={optim_name}"])
    dm = emotic_data(root, setting, tmp_path)
    torch.manual_seed(0)
    return fit_briefly(emotic_module(cfg, dm), dm, tmp_path, test, limit_val_batches=1)


@pytest.mark.slow
@pytest.mark.parametrize("optim_name", [o for o in options("optim") if not needs_linear_readout(o)])
def test_every_strategy_trains_the_two_task_setting(optim_name, emotic_root, tmp_path):
    """BayesAgg-MTL is left out: its regression posterior needs squared error, not the dimensions' L1
    (next tests)."""
    fit(emotic_root, "2task", optim_name, tmp_path)


@pytest.mark.parametrize("setting", ["26task", "2task"])
def test_bayesagg_trains_past_its_warm_up_through_lightning(setting, emotic_root, tmp_path):
    """Two epochs of two iterations: the warm-up's plain sum, then BayesAgg-MTL's steps with the
    first epoch's features as the full-data posterior's; every parameter finite. The 26 binary
    tasks; the categories with the dimensions regressed under squared error (its exact moments)."""
    cfg = compose_train(["experiment=emotic_table2", "preset=tiny", "optim=bayesagg_mtl", "optim.strategy.mc_samples=64"])
    dm = emotic_data(emotic_root, setting, tmp_path, dimensions_loss="squared_error")
    module = emotic_module(cfg, dm)
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    groups = {":binary"} | ({"dimensions"} if setting == "2task" else set())  # the categories' binary outputs together
    assert module.iterations == 4 and module.strategy.epoch == 2 and set(module.strategy._full) == groups
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_bayesagg_refuses_the_two_task_settings_l1_dimensions_in_one_sentence(emotic_root, tmp_path):
    with pytest.raises(ConfigError, match=r"task 'dimensions' \(regression\) is trained with another loss"):
        fit(emotic_root, "2task", "bayesagg_mtl", tmp_path)


@pytest.mark.parametrize(
    "optim_name", [pytest.param(o, marks=[] if o in ("vanilla", "ga", "mtl_io") else [pytest.mark.slow]) for o in FAMILIES]
)
def test_strategy_families_train_the_26_task_setting(optim_name, emotic_root, tmp_path):
    """Equal weights, GA and MTL-IO (one step per task) at T = 26 by default; the others in the slow run."""
    fit(emotic_root, "26task", optim_name, tmp_path)


def test_the_test_stage_reports_emotic_metrics(emotic_root, tmp_path):
    metrics = fit(emotic_root, "2task", "mao", tmp_path, test=True)
    assert {"test/categories_map", "test/categories_mf1", "test/dimensions_mae", "test/valence_mae"} <= set(metrics)
    assert 0 <= metrics["test/categories_map"] <= 1


def test_encoders_load_a_places_style_checkpoint_and_say_once_when_they_start_from_scratch(tmp_path, caplog):
    import logging

    import timm

    from medmtl.data.emotic import emotic_tasks
    from medmtl.models.emotic_2enc import EmoticTwoEncoder

    torch.manual_seed(5)
    source = timm.create_model("test_resnet", num_classes=365)
    places = {"epoch": 90, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    path = tmp_path / "places.pth.tar"
    torch.save(places, path)
    with caplog.at_level(logging.WARNING, logger="medmtl.models.emotic_2enc"):
        model = EmoticTwoEncoder(emotic_tasks("2task"), backbone="test_resnet", context_weights=str(path), body_weights=None)
    assert torch.equal(model.context_encoder.layer4[-1].conv2.weight, source.layer4[-1].conv2.weight)
    assert not torch.equal(model.body_encoder.layer4[-1].conv2.weight, source.layer4[-1].conv2.weight)
    scratch = [r for r in caplog.records if "from scratch" in r.getMessage()]
    assert len(scratch) == 1 and "body" in scratch[0].getMessage()
    from medmtl.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="missing.pth.*model.context_weights=null"):
        EmoticTwoEncoder(emotic_tasks("2task"), backbone="test_resnet", context_weights=str(tmp_path / "missing.pth"))
