"""ResNet-34 U-Net (Pascal et al. 2022 Table 2 reference): smp's encoder/decoder with our four task heads."""

import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision

from medmtl.models import count_parameters
from medmtl.models.res34_unet import Res34UNet
from medmtl.tasks import refuge_tasks


def test_parameter_count_is_smp_unet_with_our_heads_instead_of_its_head():
    reference = smp.Unet("resnet34", encoder_weights=None, classes=1)
    body = count_parameters(reference) - count_parameters(reference.segmentation_head)
    heads = 3 * (16 + 1) + (512 + 1)  # OD, OC, fovea: 1x1 conv on 16 channels; glaucoma: linear(512, 1)
    assert count_parameters(Res34UNet(refuge_tasks())) == body + heads


def test_outputs_subsets_and_input_sizes():
    model = Res34UNet(refuge_tasks(), backbone="resnet18", decoder_channels=(32, 16, 8, 8, 8)).eval()
    out = model(torch.rand(2, 3, 64, 96))
    assert out["glaucoma"].shape == (2,) and all(out[k].shape == (2, 64, 96) for k in ("od", "oc", "fovea"))
    calls = []
    model.decoder.register_forward_hook(lambda *a: calls.append(1))
    assert set(model(torch.rand(1, 3, 64, 64), tasks=["glaucoma"])) == {"glaucoma"} and not calls
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.rand(1, 3, 48, 48))


def test_pretrained_encoder_loads_a_local_torchvision_resnet(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = Res34UNet(refuge_tasks(), backbone="resnet18", pretrained=True, weights_path=str(tmp_path / "resnet18.pth"))
    torch.testing.assert_close(model.encoder.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
