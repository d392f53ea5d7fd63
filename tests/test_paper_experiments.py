"""The scene experiments compose with the settings their papers state (Hervella et al. 2024,
section 5.2.3; Vandenhende et al. 2022, section 4.1.4 and Table V; the NYUv2 benchmark of Liu et
al. 2019), every arm of their sweeps composes, and preset=tiny makes each a CPU run."""

import pytest

from helpers import CONF, compose_train, options


def sweep(cfg, key):
    return str(cfg.hydra.sweeper.params[key]).split(",")


@pytest.mark.parametrize("name", ["nyudv2_mao_table4", "nyudv2_mao_table5"])
def test_mao_nyudv2_tables_follow_the_paper(name):
    cfg = compose_train([f"experiment={name}"])
    assert cfg.data.layout == "nyud_mt" and list(cfg.data.tasks) == ["semseg", "depth", "normals"]  # 40 classes
    assert cfg.data.batch_size == 4 and cfg.data.val_fraction == 0 and cfg.data.normals_loss == "cosine"
    assert cfg.optim.optimizer.lr == 1e-4 and cfg.optim.optimizer.weight_decay == 1e-4
    assert cfg.optim.decoupled_weight_decay  # decoupled decay (Loshchilov & Hutter), for every method
    assert cfg.optim.scheduler._target_.endswith("PolynomialLR") and cfg.optim.scheduler.power == 0.9
    assert cfg.optim.scheduler.total_iters == cfg.trainer.max_epochs == (100 if name.endswith("4") else 170)
    assert sweep(cfg, "mao_nyud_arm") == ["mtan", "mtinet"]
    assert sweep(cfg, "mao_method") == ["equal_weights", "uncertainty", "dwa", "gradnorm", "mao"]
    assert sweep(cfg, "seed") == ["0", "1", "2", "3", "4"]
    assert cfg.model._target_.endswith("MTAN") and cfg.model.backbone == "resnet18"
    pretrained = cfg.model.weights_path is not None
    assert pretrained == name.endswith("4")


@pytest.mark.parametrize("experiment", ["nyudv2_mao_table4", "emotic_table2"])
@pytest.mark.parametrize("method", [f"mao_method={m}" for m in options("mao_method")] + ["optim=ga", "optim=mao", "optim=pcgrad"])
def test_every_method_of_the_mao_experiments_decays_weights_decoupled(experiment, method):
    import torch

    from medmtl.run import _optimizer_factory
    from medmtl.strategies.mao import MultiAdaptive

    cfg = compose_train([f"experiment={experiment}", method])
    optimizer = _optimizer_factory(cfg.optim)([torch.nn.Parameter(torch.ones(2))])
    decoupled = isinstance(optimizer, (torch.optim.AdamW, MultiAdaptive)) or optimizer.param_groups[0]["decoupled_weight_decay"]
    assert decoupled and optimizer.param_groups[0]["weight_decay"] == (1e-4 if experiment.startswith("nyud") else 5e-4)


def test_decoupled_adam_is_adamw_and_other_optimizers_are_refused():
    from functools import partial

    import torch

    from medmtl.errors import ConfigError
    from medmtl.module import with_decoupled_weight_decay

    weights = [torch.nn.Parameter(torch.tensor([1.0, -2.0])) for _ in range(2)]
    factories = [
        with_decoupled_weight_decay(partial(torch.optim.Adam, lr=0.1, weight_decay=0.5)),
        partial(torch.optim.AdamW, lr=0.1, weight_decay=0.5),
    ]
    for weight, factory in zip(weights, factories):
        optimizer = factory([weight])
        weight.grad = torch.tensor([0.3, 0.1])
        optimizer.step()
    torch.testing.assert_close(weights[0], weights[1])
    with pytest.raises(ConfigError, match="not SGD"):
        with_decoupled_weight_decay(partial(torch.optim.SGD, lr=0.1))


def test_mtinet_arm_uses_hrnet18():
    cfg = compose_train(["experiment=nyudv2_mao_table4", "mao_nyud_arm=mtinet"])
    assert cfg.model._target_.endswith("MTINet") and cfg.model.backbone == "hrnet_w18"


@pytest.mark.parametrize("arm", options("nyud_arm"))
def test_survey_table5_arms(arm):
    cfg = compose_train(["experiment=nyudv2_survey_table5", f"nyud_arm={arm}"])
    evaluated = [t for t in cfg.data.tasks if t not in cfg.data.auxiliary_tasks]
    assert evaluated == ["semseg", "depth"] and cfg.data.layout == "nyud_mt"
    # the survey's code predicts normals and edges as auxiliary tasks in its decoder-focused networks
    decoder_focused = arm.startswith(("padnet", "mtinet"))
    assert list(cfg.data.auxiliary_tasks) == (["normals", "edge"] if decoder_focused else [])
    # uniform weights on NYUD-v2; the auxiliary normals and edges at 10 and 50 (the survey code's +edges_normals configs)
    expected = "stl" if arm.startswith("stl") else "fixed" if decoder_focused else "vanilla"
    assert cfg.optim.name == expected
    if decoder_focused:
        assert dict(cfg.optim.strategy.weights) == {"normals": 10.0, "edge": 50.0} and cfg.optim.strategy.default_weight == 1.0
    assert cfg.model.backbone == ("hrnet_w18_small_v2" if "hrnet" in arm or arm == "mtinet" else "resnet50")
    assert cfg.model.weights_path is not None  # "all experiments use pre-trained ImageNet weights"
    tiny = compose_train(["experiment=nyudv2_survey_table5", f"nyud_arm={arm}", "preset=tiny"])
    assert tiny.model.weights_path is None and tiny.trainer.accelerator == "cpu"
    assert tiny.model.backbone == ("hrnet_tiny" if "hrnet" in arm or arm == "mtinet" else "test_resnet")  # same family


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


@pytest.mark.parametrize("name,setting", [("emotic_table1", "2task"), ("emotic_table2", "2task"), ("emotic_table3", "26task")])
def test_emotic_tables_follow_the_paper(name, setting):
    cfg = compose_train([f"experiment={name}"])
    assert cfg.model._target_.endswith("EmoticTwoEncoder") and cfg.model.backbone == "resnet18"
    assert cfg.data.setting == setting and cfg.data.batch_size == 52 and cfg.data.augment  # horizontal flips
    assert cfg.data.context_size == 224
    assert cfg.optim.optimizer.weight_decay == 5e-4 and cfg.optim.decoupled_weight_decay
    assert cfg.trainer.max_epochs == 15
    assert cfg.optim.scheduler.gamma == 0.1 and cfg.optim.scheduler.step_size == 8  # a tenth after the first half
    assert sweep(cfg, "mao_method") == ["equal_weights", "uncertainty", "dwa", "gradnorm", "mao"]
    assert sweep(cfg, "seed") == ["0", "1", "2", "3", "4"]
    if name == "emotic_table1":
        assert sweep(cfg, "optim.optimizer.lr") == ["1.0e-3", "1.0e-4"]


@pytest.mark.parametrize(
    "method,lr", [("equal_weights", 1e-4), ("uncertainty", 1e-4), ("dwa", 1e-4), ("gradnorm", 1e-4), ("mao", 1e-3)]
)
def test_emotic_table2_uses_each_methods_best_learning_rate(method, lr):
    cfg = compose_train(["experiment=emotic_table2", f"mao_method={method}"])
    assert cfg.optim.optimizer.lr == lr


@pytest.mark.parametrize(
    "name", ["refuge_table1", "refuge_table2", "refuge_table2_res34", "refuge_table3", "refuge_table4", "refuge_lr_sensitivity"]
)
def test_refuge_tables_follow_pascal_2022(name):
    """No augmentation (the paper and its authors' code); single-task networks selected per task."""
    cfg = compose_train([f"experiment={name}"])
    assert cfg.data.augment is False
    stl = compose_train([f"experiment={name}", "optim=stl"])
    assert stl.optim.model_selection == "per_task"


@pytest.mark.parametrize("arm", ["resnet50", "deeplabv3p", "moe"])
def test_idrid_table1_follows_roy_2025(arm):
    cfg = compose_train(["experiment=idrid_table1", f"idrid_arm={arm}"])
    # the same weights option for every arm, so one sweep passes ImageNet weights to all three
    assert cfg.model.weights_path.startswith("resnet50-") and cfg.model.input_normalization == "imagenet"
    assert cfg.data.missing_mask == "negative" and cfg.data.val_fraction == 0
    assert cfg.data.focal_alpha == 0.25 and cfg.data.grading_focal == "one_hot"  # the authors' code
    if arm == "moe":
        assert cfg.model.top_p == 0.8 and cfg.model.top_p_scores == "raw" and cfg.model.dense_fraction == 0.5
        assert (cfg.model.l1_weight, cfg.model.balance_weight, cfg.model.entropy_weight) == (1.0, 1.0, 1.0)
    tiny = compose_train(["experiment=idrid_table1", f"idrid_arm={arm}", "preset=tiny"])
    assert tiny.model.weights_path is None  # a tiny backbone cannot take ResNet-50 weights


@pytest.mark.parametrize("name", ["medmnist_umedpt", "medmnist_2d", "medmnist_single_task"])
def test_medmnist_experiments_follow_schafer_2024(name):
    cfg = compose_train([f"experiment={name}"])
    assert cfg.data.input_range == "unit" and cfg.data.loss_normalization and cfg.data.augment
    assert cfg.optim.name == "ga" and cfg.optim.optimizer.lr == 1e-3 and cfg.optim.optimizer.weight_decay == 0.05
    assert sweep(cfg, "seed") == ["range(0", "5)"]  # five repetitions
    if name == "medmnist_single_task":  # the ImageNet-pretrained single-task baseline, its batch norms kept
        assert cfg.model.weights_path.startswith("resnet50-") and cfg.model.norm == "batchnorm"
        assert len(sweep(cfg, "data.flags")) == 12
    else:
        assert cfg.model.weights_path is None and cfg.model.norm == "layernorm_noaffine"


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_says_how_it_differs_from_its_paper(name):
    """The header lists the settings that still differ from the paper (or says it is not a paper table)."""
    header = []
    for line in (CONF / "experiment" / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lower())
    text = " ".join(header)
    assert "differ" in text or "not a paper table" in text, f"{name}: no list of differences in its header"


@pytest.mark.parametrize("arm", ["cross_stitch", "nddr_cnn", "mtl_baseline"])
def test_soft_sharing_arms_train_as_the_surveys_code(arm):
    """The survey's configs/nyud/resnet50/{cross_stitch,nddr_cnn}.yml: SGD lr 1e-3, momentum 0.9,
    weight decay 1e-4, the fusion units at 100 x, batch 8, 50 epochs; the other arms keep the
    experiment's Adam setting."""
    cfg = compose_train(["experiment=nyudv2_survey_table5", f"nyud_arm={arm}"])
    optimizer = cfg.optim.optimizer
    if arm == "mtl_baseline":
        assert optimizer._target_ == "torch.optim.Adam" and cfg.data.batch_size == 6 and cfg.trainer.max_epochs == 100
        assert cfg.optim.get("fusion_lr_scale") is None
        return
    assert optimizer._target_ == "torch.optim.SGD" and "betas" not in optimizer
    assert (optimizer.lr, optimizer.momentum, optimizer.weight_decay) == (1e-3, 0.9, 1e-4)
    assert cfg.optim.fusion_lr_scale == 100 and cfg.data.batch_size == 8 and cfg.trainer.max_epochs == 50
    assert cfg.optim.scheduler.total_iters == 50
