"""The scene experiments compose with the settings their papers state (Hervella et al. 2024,
section 5.2.3; Vandenhende et al. 2022, section 4.1.4 and Table V; the NYUv2 benchmark of Liu et
al. 2019), every arm of their sweeps composes, and preset=tiny makes each a CPU run."""

import pytest

from test_configs import compose_train, options


def sweep(cfg, key):
    return str(cfg.hydra.sweeper.params[key]).split(",")


@pytest.mark.parametrize("name", ["nyudv2_mao_table4", "nyudv2_mao_table5"])
def test_mao_nyudv2_tables_follow_the_paper(name):
    cfg = compose_train([f"experiment={name}"])
    assert cfg.data.layout == "nyud_mt" and list(cfg.data.tasks) == ["semseg", "depth", "normals"]  # 40 classes
    assert cfg.data.batch_size == 4 and cfg.data.val_fraction == 0 and cfg.data.normals_loss == "cosine"
    assert cfg.optim.optimizer.lr == 1e-4 and cfg.optim.optimizer.weight_decay == 1e-4
    assert cfg.optim.optimizer._target_ == "torch.optim.AdamW"  # decoupled decay (Loshchilov & Hutter)
    assert cfg.optim.scheduler._target_.endswith("PolynomialLR") and cfg.optim.scheduler.power == 0.9
    assert cfg.optim.scheduler.total_iters == cfg.trainer.max_epochs == (100 if name.endswith("4") else 170)
    assert sweep(cfg, "mao_nyud_arm") == ["mtan", "mtinet"]
    assert sweep(cfg, "mao_method") == ["equal_weights", "uncertainty", "dwa", "gradnorm", "mao"]
    assert sweep(cfg, "seed") == ["0", "1", "2", "3", "4"]
    assert cfg.model._target_.endswith("MTAN") and cfg.model.backbone == "resnet18"
    pretrained = cfg.model.pretrained_file is not None
    assert pretrained == name.endswith("4")


@pytest.mark.parametrize("method", options("mao_method"))
def test_every_mao_method_decays_weights_decoupled(method):
    cfg = compose_train(["experiment=nyudv2_mao_table4", f"mao_method={method}"])
    expected = "medmtl.strategies.MultiAdaptive" if method == "mao" else "torch.optim.AdamW"
    assert cfg.optim.optimizer._target_ == expected and cfg.optim.optimizer.weight_decay == 1e-4
    assert cfg.optim.name == ("vanilla" if method == "equal_weights" else method)


def test_mtinet_arm_uses_hrnet18():
    cfg = compose_train(["experiment=nyudv2_mao_table4", "mao_nyud_arm=mtinet"])
    assert cfg.model._target_.endswith("MTINet") and cfg.model.backbone == "hrnet_w18"


@pytest.mark.parametrize("arm", options("nyud_arm"))
def test_survey_table5_arms(arm):
    cfg = compose_train(["experiment=nyudv2_survey_table5", f"nyud_arm={arm}"])
    assert list(cfg.data.tasks) == ["semseg", "depth"] and cfg.data.layout == "nyud_mt"
    assert cfg.optim.name == ("stl" if arm.startswith("stl") else "vanilla")  # uniform weights on NYUD-v2
    assert cfg.model.backbone == ("hrnet_w18" if "hrnet" in arm or arm == "mtinet" else "resnet50")
    assert cfg.model.pretrained_file is not None  # "all experiments use pre-trained ImageNet weights"
    tiny = compose_train(["experiment=nyudv2_survey_table5", f"nyud_arm={arm}", "preset=tiny"])
    assert tiny.model.pretrained_file is None and tiny.trainer.accelerator == "cpu"


def test_survey_table5_sweeps_every_arm():
    cfg = compose_train(["experiment=nyudv2_survey_table5"])
    assert sorted(sweep(cfg, "nyud_arm")) == sorted(options("nyud_arm"))


def test_segnet_mtan_benchmark_protocol():
    cfg = compose_train(["experiment=nyudv2_segnet_mtan"])
    assert cfg.model._target_.endswith("SegNetMTAN") and cfg.model.width == 1.0
    assert cfg.data.layout == "mtan" and list(cfg.data.tasks) == ["semseg", "depth", "normals"]
    assert cfg.data.batch_size == 2 and cfg.trainer.max_epochs == 200 and cfg.optim.optimizer.lr == 1e-4
    assert cfg.optim.scheduler.step_size == 100 and cfg.optim.scheduler.gamma == 0.5
    assert set(sweep(cfg, "optim")) <= set(options("optim")) and "stl" in sweep(cfg, "optim")
