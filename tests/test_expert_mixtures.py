"""MMoE, CGC, DSelect-k and PLE against LibMTL's own classes (the PyPI release, run here with the same
weights): same parameter count, same outputs, and the same DSelect-k regulariser gradient."""

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from medmtl.data.nyudv2 import nyudv2_tasks
from medmtl.models.backbones import dense_features
from medmtl.models.expert_mixtures import ExpertMixture, ProgressiveLayeredExtraction, smooth_step

SIZE = (32, 48)


def libmtl_architectures():
    # LibMTL 1.1.5 (the PyPI release) imports torchvision.models.utils, which torchvision removed
    # in 0.13; its architectures never use it
    sys.modules.setdefault(
        "torchvision.models.utils", types.SimpleNamespace(load_state_dict_from_url=torch.hub.load_state_dict_from_url)
    )
    import LibMTL.architecture as architecture

    return architecture


def tasks(names=("semseg", "depth")):
    return nyudv2_tasks("nyud_mt", list(names))


def ours(task_list, **options) -> ExpertMixture:
    torch.manual_seed(0)
    model = ExpertMixture(
        task_list, gate_input_size=SIZE, backbone="test_resnet", aspp_width=8, input_normalization="none", **options
    )
    return model.double()


def theirs(kind: str, model: ExpertMixture, task_list, num_experts: list[int], **kwargs) -> nn.Module:
    """LibMTL's ``kind`` with ``model``'s experts, gates and heads copied in."""
    architecture = libmtl_architectures()
    names = [t.name for t in task_list]
    decoders = nn.ModuleDict({n: type(model.heads_by_task[n])(*_head_args(model, n)) for n in names})
    net = getattr(architecture, kind)(
        names,
        lambda: dense_features("test_resnet", 8)[0],
        decoders,
        rep_grad=False,
        multi_input=False,
        device=torch.device("cpu"),
        img_size=(3, *SIZE),
        num_experts=num_experts,
        **kwargs,
    ).double()
    mapping = {"experts.": "experts_shared.", "heads_by_task.": "decoders."}
    state = {}
    for key, value in model.state_dict().items():
        for ours_prefix, their_prefix in mapping.items():
            if key.startswith(ours_prefix):
                key = their_prefix + key[len(ours_prefix) :]
        if key.startswith("task_experts."):
            key = "experts_specific." + key[len("task_experts.") :]
        if key.startswith("gates."):
            _, task, layer, parameter = key.split(".")
            key = {
                "linear": f"gate_specific.{task}.0.{parameter}",
                "z_logits": f"_z_logits.{task}.{parameter}",
                "w_logits": f"_w_logits.{task}.{parameter}",
            }[layer]
        state[key] = value
    net.load_state_dict(state, strict=True)
    if kind == "DSelect_k":
        # LibMTL casts the characters of np.binary_repr to bool: under NumPy 2 both '0' and '1' are
        # True, every expert gets the same code and the gate selects nothing. Give it the codes its
        # code means (bit j of expert e, most significant first), written here from the paper
        n_bits = net._num_binary
        codes = [[np.binary_repr(e, width=n_bits)[j] == "1" for j in range(n_bits)] for e in range(net.num_experts)]
        net._binary_codes = torch.tensor(codes).unsqueeze(0)
    return net


def _head_args(model: ExpertMixture, name: str):
    head = model.heads_by_task[name]
    first_conv = next(m for m in head.modules() if isinstance(m, nn.Conv2d))
    return first_conv.in_channels, model.task_by_name[name], 8


def their_outputs(net, model: ExpertMixture, image: torch.Tensor) -> dict[str, torch.Tensor]:
    return model.finish(net(image), image.shape[-2:])


def image(n=2):
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize(
    ("kind", "options", "counts", "kwargs"),
    [
        ("MMoE", {"num_experts": 3}, [3], {}),
        ("CGC", {"num_experts": 2, "task_experts": 1}, [2, 1, 1], {}),
        ("DSelect_k", {"num_experts": 3, "gate": "dselect_k", "num_nonzeros": 2}, [3], {"num_nonzeros": 2, "kgamma": 1.0}),
        ("DSelect_k", {"num_experts": 4, "gate": "dselect_k", "num_nonzeros": 1}, [4], {"num_nonzeros": 1, "kgamma": 1.0}),
    ],
)
def test_same_parameters_and_outputs_as_libmtl(kind, options, counts, kwargs):
    task_list = tasks()
    model = ours(task_list, **options).eval()
    net = theirs(kind, model, task_list, counts, **kwargs).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in net.parameters())
    x = image()
    with torch.no_grad():
        expected = their_outputs(net, model, x)
        got = model(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-10)


def test_dselect_k_regulariser_gradient_is_libmtls_for_one_task():
    """LibMTL back-propagates the last task's gate regulariser inside its forward; with one task
    that is the whole regulariser, so the gate gradients must match ours. Three experts: not a
    power of two, so the 1 / sum term is on."""
    task_list = tasks(["semseg"])
    model = ours(task_list, num_experts=3, gate="dselect_k", num_nonzeros=2).train()
    net = theirs("DSelect_k", model, task_list, [3], num_nonzeros=2, kgamma=1.0).train()
    x = image(4)
    net(x)  # LibMTL: regulariser.backward() inside the forward
    model(x)
    regulariser = model.auxiliary_loss("semseg")
    assert regulariser is not None
    regulariser.backward()
    gate = model.gates["semseg"]
    torch.testing.assert_close(gate.z_logits.weight.grad, net._z_logits["semseg"].weight.grad)
    torch.testing.assert_close(gate.z_logits.bias.grad, net._z_logits["semseg"].bias.grad)
    assert model.eval().auxiliary_loss("semseg") is None  # a training term only


def test_every_tasks_dselect_gate_is_regularised():
    model = ours(tasks(), num_experts=3, gate="dselect_k").train()
    model(image())
    assert all(model.auxiliary_loss(t) is not None and model.auxiliary_loss(t) > 0 for t in ("semseg", "depth"))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 3.0])
def test_smooth_step_is_zero_one_outside_and_continuous_at_the_ends(gamma):
    t = torch.tensor([-gamma, -gamma / 2, 0.0, gamma / 2, gamma], dtype=torch.float64)
    torch.testing.assert_close(smooth_step(t, gamma), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0], dtype=torch.float64))
    # the cubic's slope vanishes at +-gamma/2: d/dt (-2/g^3 t^3 + 3/(2g) t) = -6/g^3 t^2 + 3/(2g)
    ends = torch.tensor([-gamma / 2, gamma / 2], dtype=torch.float64)
    assert torch.allclose(-6 / gamma**3 * ends**2 + 3 / (2 * gamma), torch.zeros(2, dtype=torch.float64))


def test_dselect_k_weights_are_a_distribution_over_the_experts():
    model = ours(tasks(), num_experts=4, gate="dselect_k", num_nonzeros=3).eval()
    gate = model.gates["semseg"]
    weights = gate(torch.randn(5, 3 * SIZE[0] * SIZE[1], dtype=torch.float64) * 50)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(5, dtype=torch.float64))


def test_other_image_sizes_are_pooled_to_the_gates_input():
    model = ours(tasks(), num_experts=2).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96, dtype=torch.float64))
    assert out["semseg"].shape[-2:] == (64, 96)


def libmtl_resnet_encoder() -> nn.Module:
    """timm's test ResNet with the attribute names LibMTL's PLE reads (torchvision's: ``relu``)."""
    import timm

    network = timm.create_model("test_resnet", num_classes=0, global_pool="", output_stride=8)
    network.relu = network.act1
    return network


@pytest.mark.parametrize(("shared", "own"), [(1, 1), (2, 1), (1, 2)])
def test_ple_has_libmtls_parameters_and_outputs(shared, own):
    task_list = tasks()
    torch.manual_seed(0)
    model = ProgressiveLayeredExtraction(
        task_list,
        num_experts=shared,
        task_experts=own,
        gate_input_size=SIZE,
        backbone="test_resnet",
        aspp_width=8,
        input_normalization="none",
    ).double()
    names = [t.name for t in task_list]
    decoders = nn.ModuleDict({n: type(model.heads_by_task[n])(*_head_args(model, n)) for n in names})
    net = (
        libmtl_architectures()
        .PLE(
            names,
            libmtl_resnet_encoder,
            decoders,
            rep_grad=False,
            multi_input=False,
            device=torch.device("cpu"),
            img_size=(3, *SIZE),
            num_experts=[shared] + [own] * len(names),
        )
        .double()
    )
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "shared_levels":  # shared_levels.<level>.<expert>.*
            key = ".".join(["encoder.shared_layer", *parts[1:]])
        elif parts[0] == "task_levels":  # task_levels.<task>.<level>.<expert>.*
            key = ".".join(["encoder.specific_layer", parts[2], parts[1], *parts[3:]])
        elif parts[0] == "gates":  # gates.<task>.<level>.linear.*
            key = ".".join(["encoder.gate_specific", parts[1], parts[2], "0", parts[-1]])
        elif parts[0] == "heads_by_task":
            key = ".".join(["decoders", *parts[1:]])
        state[key] = value
    their_state = net.state_dict()
    # timm's stem ReLU is registered twice on LibMTL's side (act1 and relu): no parameters, so the
    # two state dicts have the same keys
    assert set(state) == set(their_state)
    net.load_state_dict(state)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in net.parameters())
    x = image()
    with torch.no_grad():
        expected = their_outputs(net.eval(), model, x)
        got = model.eval()(x)
    for name in names:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-10)
