"""One conformance suite for every ``conf/model`` entry (shrunk by ``preset=tiny``): what every
strategy relies on. A task subset's forward returns only those tasks, with the same values as the
whole forward; the parameter groups partition the parameters; a task's loss reaches only its own
path; representation + heads equals forward; the single-task (STL) variant builds and shares
nothing. A new model file fails ``test_every_model_has_a_task_set`` until it is listed here."""

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train, options
from medmtl.data.emotic import emotic_tasks
from medmtl.data.idrid import idrid_tasks
from medmtl.data.multimnist import multimnist_tasks
from medmtl.data.nyudv2 import nyudv2_tasks
from medmtl.models import SeparateNetworks, build_model
from medmtl.tasks import mark_auxiliary, refuge_tasks

SCENE = lambda: nyudv2_tasks("nyud_mt", ["semseg", "depth", "normals", "edge"])
#: the survey's PAD-Net and MTI-Net task set: normals and edges auxiliary (initial predictions only)
SCENE_AUXILIARY = lambda: mark_auxiliary(SCENE(), ["normals", "edge"])
#: per model: the task set it is tested with (its papers' tasks) and extra overrides
TASK_SETS = {
    "unet_vgg16": (refuge_tasks, []),
    "res34_unet": (refuge_tasks, []),
    "umedpt": (refuge_tasks, ["model.backbone=test_resnet", "model.decoder_width=8"]),
    "resnet_classifier": (lambda: idrid_tasks(lesions=()), []),
    "deeplabv3p": (lambda: idrid_tasks(grades=()), []),
    "moe_deeplabv3p": (idrid_tasks, []),
    "mtl_baseline": (SCENE, []),
    "cross_stitch": (SCENE, []),
    "nddr_cnn": (SCENE, []),
    "mtan": (SCENE, []),
    "segnet_mtan": (SCENE, []),
    "padnet": (SCENE, []),
    "padnet_hrnet": (SCENE, ["model=padnet", "model.backbone=hrnet_tiny"]),
    "mtl_baseline_hrnet": (SCENE, ["model=mtl_baseline", "model.backbone=hrnet_tiny"]),
    "mtinet": (SCENE, []),
    "mmoe": (SCENE, []),
    "cgc": (SCENE, []),
    "dselect_k": (SCENE, []),
    "ple": (SCENE, []),
    "ltb": (SCENE, []),
    "padnet_auxiliary": (SCENE_AUXILIARY, ["model=padnet"]),
    "mtinet_auxiliary": (SCENE_AUXILIARY, ["model=mtinet"]),
    "emotic_2enc": (lambda: emotic_tasks("2task"), []),
    "emotic_2enc_26_tasks": (lambda: emotic_tasks("26task"), ["model=emotic_2enc"]),
    "multi_lenet": (multimnist_tasks, []),
    "multi_lenet_linear_heads": (multimnist_tasks, ["model=multi_lenet", "model.head=linear"]),
}
#: models that read several inputs (the datamodule's input_keys): how many
INPUTS = {"emotic_2enc": 2, "emotic_2enc_26_tasks": 2}
SIZE = (64, 64)
#: models that read another image shape than 3 x SIZE
IMAGE_SHAPES = {"multi_lenet": (1, 28, 28), "multi_lenet_linear_heads": (1, 28, 28)}


def build(name: str, separate: bool = False):
    make_tasks, overrides = TASK_SETS[name]
    model_option = next((o.split("=")[1] for o in overrides if o.startswith("model=")), name)
    cfg = compose_train([f"model={model_option}", "preset=tiny", *[o for o in overrides if not o.startswith("model=")]])
    tasks = make_tasks()
    torch.manual_seed(0)
    model = build_model(instantiate(cfg.model), tasks, separate_networks=separate)
    return model.eval(), tasks


def inputs(name: str, n: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    shape = IMAGE_SHAPES.get(name, (3, *SIZE))
    return tuple(torch.rand(n, *shape, generator=g) for _ in range(INPUTS.get(name, 1)))


def expected_shape(task, n: int) -> tuple:
    spatial = SIZE if task.is_dense else ()
    channels = () if task.channels == 1 else (task.channels,)
    return (n, *channels, *spatial)


def test_every_model_has_a_task_set():
    assert set(options("model")) <= set(TASK_SETS)


@pytest.mark.parametrize("name", sorted(TASK_SETS))
def test_subset_forward_returns_only_those_tasks_with_the_whole_forwards_values(name):
    model, tasks = build(name)
    x = inputs(name)
    with torch.no_grad():
        everything = model(*x)
        assert set(everything) == {t.name for t in tasks}
        for task in tasks:
            alone = model(*x, tasks=[task.name])
            assert set(alone) == {task.name}
            assert alone[task.name].shape == expected_shape(task, 2), task.name
            torch.testing.assert_close(alone[task.name], everything[task.name], msg=task.name)


@pytest.mark.parametrize("name", sorted(TASK_SETS))
def test_parameter_groups_partition_the_parameters(name):
    model, tasks = build(name)
    ids = lambda params: [id(p) for p in params]
    every = set(ids(model.parameters()))
    shared = ids(model.shared_parameters())
    heads = {t.name: ids(model.head_parameters(t.name)) for t in tasks}
    for task in tasks:
        path = set(ids(model.path_parameters(task.name)))
        assert path == set(heads[task.name]) | (set(shared) & path), task.name
        assert not set(heads[task.name]) & set(shared)
    pieces = shared + [p for task_ids in heads.values() for p in task_ids]
    assert len(pieces) == len(set(pieces)), "a parameter is in two groups"
    assert set(pieces) == every, "a parameter is on no task's path"
    if len(tasks) > 1:
        assert shared, "a multi-task network shares nothing"
        assert id(model.last_shared_layer()) in set(shared)


@pytest.mark.parametrize("name", sorted(TASK_SETS))
def test_a_tasks_loss_reaches_only_its_path(name):
    model, tasks = build(name)
    model.train()
    for task in tasks:
        model.zero_grad(set_to_none=True)
        outputs = model(*inputs(name), tasks=[task.name])
        loss = outputs[task.name].float().pow(2).mean()
        for extra in model.deep_supervision(task.name):
            loss = loss + extra.float().pow(2).mean()
        loss.backward()
        path = {id(p) for p in model.path_parameters(task.name)}
        reached = {id(p) for p in model.parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
        assert reached <= path, f"{task.name}'s loss moved parameters off its path"
        assert reached, task.name


@pytest.mark.parametrize("name", sorted(TASK_SETS))
def test_representation_then_heads_equals_forward(name):
    model, tasks = build(name)
    x = inputs(name)
    names = [t.name for t in tasks]
    with torch.no_grad():
        try:
            shared = model.representation(*x, names)
        except TypeError as error:
            assert name == "umedpt", f"{name} has no representation: {error}"  # UMedPT's tasks may take separate inputs
            return
        through_heads = model.heads(shared, names)
        direct = model(*x, names)
    for task in names:
        torch.testing.assert_close(through_heads[task], direct[task], msg=task)


@pytest.mark.parametrize("name", sorted(TASK_SETS))
def test_single_task_variant_builds_and_shares_nothing(name):
    model, tasks = build(name, separate=True)
    assert isinstance(model, SeparateNetworks)
    assert model.shared_parameters() == []
    with torch.no_grad():
        outputs = model(*inputs(name, 1))
    assert {k: v.shape for k, v in outputs.items()} == {t.name: expected_shape(t, 1) for t in tasks}


def test_scene_backbones_load_local_weights_or_say_in_one_sentence_that_they_are_missing(tmp_path):
    import timm

    from medmtl.errors import WeightsNotFoundError
    from medmtl.models.mtl_baseline import MTLBaseline

    torch.manual_seed(3)
    source = timm.create_model("test_resnet", num_classes=7)  # a classifier's state dict: its head is dropped
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    model = MTLBaseline(SCENE(), backbone="test_resnet", aspp_width=8, weights_path=str(path))
    stem_conv, layer4 = model.backbone[0][0][0], model.backbone[3]
    for key, value in source.conv1.state_dict().items():
        assert torch.equal(stem_conv.state_dict()[key], value), key
    assert torch.equal(layer4[-1].conv2.weight, source.layer4[-1].conv2.weight)
    with pytest.raises(WeightsNotFoundError, match="not_here.pth.*set model.weights_path=null to train from scratch"):
        MTLBaseline(SCENE(), backbone="test_resnet", aspp_width=8, weights_path=str(tmp_path / "not_here.pth"))


def test_segnet_unpooling_equals_pytorchs_and_runs_in_deterministic_mode():
    import torch.nn.functional as F

    from medmtl.models.segnet_mtan import max_unpool2x2

    x = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0), requires_grad=True)
    pooled, indices = F.max_pool2d(x, 2, stride=2, return_indices=True)
    reference = F.max_unpool2d(pooled, indices, 2, stride=2, output_size=(8, 12))
    torch.testing.assert_close(max_unpool2x2(pooled, indices, (8, 12)), reference)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        max_unpool2x2(pooled, indices, (8, 12)).sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert x.grad is not None and torch.equal(x.grad != 0, reference != 0)
