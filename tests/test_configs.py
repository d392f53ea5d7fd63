"""Every option of every config group composes, and the key objects instantiate from it."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from conftest import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"
GROUPS = ("data", "model", "optim", "trainer", "logger", "callbacks", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def compose_train(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}", f"paths.log_dir={tmp_path}"])
    assert cfg is not None
    if group == "optim":
        assert cfg.optim.name == option
        instantiate(cfg.optim.strategy)
        instantiate(cfg.optim.optimizer)
    if group == "model":
        assert cfg.model._partial_ is True


def test_eval_config_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["ckpt_path=x.ckpt"])
    assert cfg.ckpt_path == "x.ckpt"


def test_default_composition_is_the_seed_000_pipeline_on_synthetic_data():
    cfg = compose_train([])
    assert cfg.model._target_.endswith("UNetVGG16")
    assert cfg.optim.name == "mtl_io"
    assert cfg.data._target_.endswith("SyntheticRefugeDataModule")
    assert cfg.optim.optimizer.lr == 1e-4 and list(cfg.optim.optimizer.betas) == [0.9, 0.999]


def test_every_optim_file_names_itself():
    for option in options("optim"):
        text = (CONF / "optim" / f"{option}.yaml").read_text()
        assert f"name: {option}" in text, option


@pytest.mark.parametrize("launcher", ["slurm", "local"])
def test_launcher_configs_compose(launcher, tmp_path):
    cfg = compose_train([f"hydra/launcher={launcher}", f"paths.log_dir={tmp_path}"])
    target = cfg.hydra.launcher._target_
    assert ("submitit" in target) if launcher == "slurm" else ("joblib" in target.lower())
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1


def test_table1_experiment_sweeps_five_methods_over_five_folds(tmp_path):
    cfg = compose_train(["experiment=refuge_table1_tiny", f"paths.log_dir={tmp_path}"])
    params = cfg.hydra.sweeper.params
    assert params.optim == "stl,vanilla,gradnorm,pcgrad,mtl_io" and params["data.fold"] == "range(0,5)"
