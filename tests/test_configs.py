"""Every option of every config group composes, and the key objects instantiate from it."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from helpers import CONF, compose_train, options
from medmtl.catalogue import PACKAGE_CONF_DIR

GROUPS = ("data", "model", "optim", "trainer", "logger", "callbacks", "experiment")


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


def test_default_composition_is_pascal_2022s_pipeline_on_synthetic_data():
    cfg = compose_train([])
    assert cfg.model._target_.endswith("UNetVGG16")
    assert cfg.optim.name == "mtl_io"
    assert cfg.data._target_.endswith("SyntheticRefugeDataModule")
    assert cfg.optim.optimizer.lr == 1e-4 and list(cfg.optim.optimizer.betas) == [0.9, 0.999]


def test_every_optim_file_names_itself():
    for option in options("optim"):
        text = (PACKAGE_CONF_DIR / "optim" / f"{option}.yaml").read_text()
        assert f"name: {option}" in text, option


@pytest.mark.parametrize("launcher", ["slurm", "local"])
def test_launcher_configs_compose(launcher, tmp_path):
    cfg = compose_train([f"hydra/launcher={launcher}", f"paths.log_dir={tmp_path}"])
    target = cfg.hydra.launcher._target_
    assert ("submitit" in target) if launcher == "slurm" else ("joblib" in target.lower())
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1


def test_table1_experiment_sweeps_five_methods_over_five_folds(tmp_path):
    cfg = compose_train(["experiment=refuge_table1", "preset=tiny", f"paths.log_dir={tmp_path}"])
    params = cfg.hydra.sweeper.params
    assert params.optim == "stl,vanilla,gradnorm,pcgrad,mtl_io" and params["data.fold"] == "range(0,5)"
    assert cfg.model.width == 0.125 and cfg.data.image_size == 64 and cfg.trainer.max_epochs == 30


@pytest.mark.parametrize("experiment", [o for o in options("experiment") if o.startswith("refuge_")])
def test_every_paper_experiment_builds_its_network_in_the_tiny_preset(experiment, tmp_path):
    """The tiny preset shrinks whichever network the experiment uses and drops pretrained weights
    (they exist for the full-size networks only)."""
    from medmtl.models import build_model, count_parameters
    from medmtl.tasks import refuge_tasks

    full = compose_train([f"experiment={experiment}", "model.pretrained=false", f"paths.log_dir={tmp_path}"])
    tiny = compose_train([f"experiment={experiment}", "preset=tiny", f"paths.log_dir={tmp_path}"])
    assert tiny.model._target_ == full.model._target_ and tiny.model.pretrained is False
    size = {
        name: count_parameters(build_model(instantiate(cfg.model), refuge_tasks()))
        for name, cfg in (("full", full), ("tiny", tiny))
    }
    assert size["tiny"] < size["full"] / 2


def test_paper_tables_are_what_pascal_2022_reports(tmp_path):
    def sweep(experiment):
        return compose_train([f"experiment={experiment}", f"paths.log_dir={tmp_path}"])

    assert sweep("refuge_table2").model.pretrained and sweep("refuge_table4").model.pretrained
    assert sweep("refuge_table2_res34").model._target_.endswith("Res34UNet")
    for table in ("refuge_table3", "refuge_table4"):  # official splits, three runs each
        cfg = sweep(table)
        assert cfg.data.protocol == "official" and cfg.hydra.sweeper.params.seed == "0,1,2"
    lr = sweep("refuge_lr_sensitivity").hydra.sweeper.params
    assert lr.optim == "stl,mtl_io" and len(lr["optim.optimizer.lr"].split(",")) >= 3


@pytest.mark.parametrize("arm", ["resnet50", "deeplabv3p", "moe"])
def test_idrid_table1_arms_are_roy_2025s_networks_and_shrink_in_the_tiny_preset(arm, tmp_path):
    from medmtl.data.idrid import idrid_tasks
    from medmtl.models import build_model, count_parameters

    # ImageNet weights are not on this machine: the full network is counted from scratch
    full = compose_train(["experiment=idrid_table1", f"idrid_arm={arm}", "model.weights_path=null", f"paths.log_dir={tmp_path}"])
    tiny = compose_train(["experiment=idrid_table1", f"idrid_arm={arm}", "preset=tiny", f"paths.log_dir={tmp_path}"])
    paper_resolution = {"resnet50": [178, 268], "deeplabv3p": [1424, 2144], "moe": [712, 1072]}[arm]
    assert list(full.data.resolution) == paper_resolution and list(tiny.data.resolution) == [64, 96]
    assert full.optim.optimizer.lr == 3e-4 and full.optim.backbone_lr_scale == 0.1
    assert full.optim.optimizer.weight_decay == 1e-4
    assert full.hydra.sweeper.params.idrid_arm == "resnet50,deeplabv3p,moe"
    tasks = idrid_tasks(full.data.lesions, grades=full.data.grades)
    size = {name: count_parameters(build_model(instantiate(cfg.model), tasks)) for name, cfg in (("full", full), ("tiny", tiny))}
    assert size["tiny"] < size["full"] / 2
