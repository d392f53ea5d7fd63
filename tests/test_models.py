"""U-Net VGG: parameter counts of Pascal et al. 2022 Table 1, task subsets, pretrained weights."""

from functools import partial

import pytest
import torch
import torchvision

from medmtl.models import build_model, count_parameters
from medmtl.models.unet_vgg16 import UNetVGG16
from medmtl.models.weights import WeightsNotFoundError
from medmtl.tasks import refuge_tasks


def test_multi_task_network_has_the_published_parameter_count():
    # Pascal et al. 2022 Table 1: MTL ~17.2e6 parameters (17,268,036 by construction: see the UNetVGG16 docstring)
    n = count_parameters(build_model(partial(UNetVGG16), refuge_tasks()))
    assert abs(n - 17.2e6) / 17.2e6 < 0.03
    assert n == 17_268_036


def test_single_task_networks_sum_to_the_published_count():
    # Pascal et al. 2022 Table 1: STL 61.2e6 = classifier (encoder + FC) + three U-Nets with one head each
    n = count_parameters(build_model(partial(UNetVGG16), refuge_tasks(), separate_networks=True))
    assert abs(n - 61.2e6) / 61.2e6 < 0.03
    assert n == 61_213_572


def test_vgg16_layout_option():
    n = count_parameters(UNetVGG16(refuge_tasks(), encoder_layout="vgg16"))
    assert abs(n - 22.6e6) / 22.6e6 < 0.01


def test_outputs_and_task_subsets():
    model = UNetVGG16(refuge_tasks(), width=1 / 16).eval()
    x = torch.rand(2, 3, 64, 48)
    out = model(x)
    assert out["glaucoma"].shape == (2,)
    assert all(out[k].shape == (2, 64, 48) for k in ("od", "oc", "fovea"))
    calls = []
    model.decoder.register_forward_hook(lambda *a: calls.append(1))
    assert set(model(x, tasks=["glaucoma"])) == {"glaucoma"}
    assert not calls, "a classification-only forward ran the decoder"
    with pytest.raises(KeyError, match="no task"):
        model(x, tasks=["depth"])
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.rand(1, 3, 40, 40))


def test_parameter_groups():
    model = UNetVGG16(refuge_tasks(), width=1 / 16)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in list(model.encoder.parameters()) + list(model.decoder.parameters())}
    assert {id(p) for p in model.head_parameters("glaucoma")} == {id(p) for p in model.classifiers.parameters()}
    assert {id(p) for p in model.head_parameters("od")} == {id(p) for p in model.dense_heads["od"].parameters()}


def test_classification_only_network_has_no_decoder():
    model = UNetVGG16([t for t in refuge_tasks() if t.name == "glaucoma"])
    assert model.decoder is None


def test_missing_weights_path_is_one_clear_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as info:
        UNetVGG16(refuge_tasks(), pretrained=True, weights_path="vgg13_bn-abd245e5.pth")
    message = str(info.value)
    assert "vgg13_bn-abd245e5.pth" in message and str(tmp_path) in message
    assert "model.pretrained=false" in message and "\n" not in message


@pytest.mark.parametrize("statistics", ["batch", "running"])
def test_pretrained_encoder_loads_from_a_local_torchvision_file(tmp_path, monkeypatch, statistics):
    torch.manual_seed(0)
    reference = torchvision.models.vgg13_bn(weights=None)
    with torch.no_grad():  # distinctive BN values, so that a copy is not confused with the defaults
        for m in reference.features:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.normal_()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "vgg13_bn-abd245e5.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = UNetVGG16(refuge_tasks(), pretrained=True, weights_path="vgg13_bn-abd245e5.pth", norm_statistics=statistics)
    assert torch.equal(model.encoder.levels[0][0].weight, reference.features[0].weight)
    assert torch.equal(model.encoder.levels[4][3].weight, reference.features[31].weight)
    assert torch.equal(model.encoder.levels[4][4].weight, reference.features[32].weight)
    if statistics == "running":  # the authors' batch norm keeps none: ImageNet's are not copied
        assert torch.equal(model.encoder.levels[4][4].running_mean, reference.features[32].running_mean)
    else:
        assert model.encoder.levels[4][4].running_mean is None


def test_unet_batch_norm_is_the_authors_batch_statistics_norm():
    """Pascal et al. 2022's code: BatchNorm2d(track_running_stats=False), validated one image at a
    time. Evaluated here: each image normalised by its own per-channel mean and biased variance
    (by hand for one layer), so an image's output does not depend on its evaluation batch; in
    training the batch's statistics; no running statistics anywhere; the parameter count unchanged."""
    from medmtl.models.unet_vgg16 import BatchStatisticsNorm, UNetVGG16
    from medmtl.tasks import refuge_tasks

    norm = BatchStatisticsNorm(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, -1.0, 0.3]))
    x = torch.randn(4, 3, 5, 6) * 3 + 1
    norm.eval()
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    by_hand = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, 3, 1, 1) + norm.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), by_hand)
    norm.train()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    batch = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, 3, 1, 1) + norm.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), batch)

    torch.manual_seed(0)
    model = UNetVGG16(refuge_tasks(), width=1 / 16).eval()
    assert not any("running" in name for name, _ in model.named_buffers())
    images = torch.randn(3, 3, 32, 32)
    together = model(images)
    alone = model(images[1:2])
    for task in together:  # float32 convolutions of other batch sizes round differently
        torch.testing.assert_close(together[task][1:2], alone[task], rtol=1e-4, atol=1e-4)
    running = UNetVGG16(refuge_tasks(), width=1 / 16, norm_statistics="running")
    assert sum(p.numel() for p in running.parameters()) == sum(p.numel() for p in model.parameters())
    assert any("running_mean" in name for name, _ in running.named_buffers())
