"""Yang et al. 2023's MedMNIST3D baselines: the 2D ResNet-18 made 3D ("ResNet-18 + 3D") or 2.5D,
and the volumes read whole.

References that are not our output: the parameter count from the network's layer list by hand;
the definition of the inflation (a volume constant along the depth meets, inside, the 2D kernel's
response to one slice); a 2.5D network, whose kernels see one slice each, answering a
depth-constant volume exactly as the 2D network answers one slice; the raw volumes of the file.
Beside their own converters (ACSConv, run in a scratch folder) the weights and outputs were equal.
"""

import numpy as np
import pytest
import torch
from torch import nn

from medmtl.data.errors import DatasetError
from medmtl.data.medmnist import medmnist_task
from medmtl.data.medmnist_synthetic import SyntheticMedMNISTDataModule
from medmtl.errors import ConfigError
from medmtl.models.resnet_classifier import ResNetClassifier
from medmtl.models.volumetric import to_3d
from test_medmnist_yang2023 import authors_resnet18_parameters


def adrenal_network(conv_3d: str = "3d", init_3d: str = "i3d") -> ResNetClassifier:
    return ResNetClassifier(
        [medmnist_task("adrenalmnist3d", False)],
        backbone="resnet18",
        in_channels=1,
        input_normalization="none",
        stem="cifar",
        dims=3,
        conv_3d=conv_3d,
        init_3d=init_3d,
    )


@pytest.mark.parametrize("conv_3d,kernel", [("3d", 27), ("2.5d", 9)])
def test_the_3d_resnet18_has_the_parameters_of_their_layer_list_with_3d_kernels(conv_3d, kernel):
    model = adrenal_network(conv_3d)
    assert sum(p.numel() for p in model.parameters()) == authors_resnet18_parameters(1, 1, kernel)
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in model.modules())


def test_a_28_cubed_volume_reaches_the_last_stage_at_4_cubed_and_gives_one_logit():
    model = adrenal_network()
    volume = torch.rand(2, 1, 28, 28, 28)
    assert model.encoder(volume)[-1].shape == (2, 512, 4, 4, 4)
    assert model(volume)["adrenalmnist3d"].shape == (2,)


@pytest.mark.parametrize("stride", [1, 2])
def test_an_inflated_kernel_answers_a_depth_constant_volume_as_the_2d_kernel_answers_a_slice(stride):
    """i3d: W3[:, :, d] = W2 / 3, so inside the volume (away from the zero-padded depth borders)
    every output slice is the 2D convolution of the slice."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3, stride=stride, padding=1, bias=True)
    wrapper = nn.Sequential(conv)
    slice_ = torch.randn(1, 4, 9, 9)
    expected = wrapper(slice_)
    inflated = to_3d(wrapper, "i3d")
    assert isinstance(inflated[0], nn.Conv3d) and inflated[0].kernel_size == (3, 3, 3)
    out = inflated(slice_.unsqueeze(2).expand(-1, -1, 9, -1, -1))
    inside = out[:, :, 1:-1]
    torch.testing.assert_close(inside, expected.unsqueeze(2).expand_as(inside), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out[:, :, 0], expected, atol=1e-3)  # the border slice sees the zero padding


def test_the_fresh_3d_initialisation_is_pytorchs_conv3d_default():
    """U(-b, b), b = 1 / sqrt(fan_in), fan_in = in_channels x 27: not the inflated 2D kernel."""
    torch.manual_seed(0)
    convs = [m for m in adrenal_network(init_3d="fresh").encoder.modules() if isinstance(m, nn.Conv3d)]
    for conv in convs:
        bound = 1 / np.sqrt(conv.weight[0].numel())
        assert conv.weight.abs().max() <= bound + 1e-7 and conv.weight.abs().max() > 0.9 * bound
        if conv.kernel_size[0] > 1:  # the 1x1x1 shortcuts have no depth to vary along
            assert not torch.equal(conv.weight[:, :, 0], conv.weight[:, :, 1])  # not constant along the depth


def test_the_2_5d_network_answers_a_depth_constant_volume_as_the_2d_network_answers_one_slice():
    """1x3x3 kernels see one slice each and every slice is the same: batch statistics, pooling and
    logits are the 2D network's on that slice (training mode: statistics of the batch)."""
    torch.manual_seed(0)
    task = [medmnist_task("adrenalmnist3d", False)]
    flat = ResNetClassifier(task, backbone="resnet18", in_channels=1, input_normalization="none", stem="cifar")
    volumetric = ResNetClassifier(task, backbone="resnet18", in_channels=1, input_normalization="none", stem="cifar")
    volumetric.load_state_dict(flat.state_dict())
    to_3d(volumetric.encoder, "i3d", "2.5d")
    slices = torch.rand(3, 1, 28, 28)
    volume = slices.unsqueeze(2).expand(-1, -1, 28, -1, -1)
    torch.testing.assert_close(volumetric(volume)["adrenalmnist3d"], flat(slices)["adrenalmnist3d"], atol=1e-5, rtol=1e-4)


def test_layers_without_a_3d_counterpart_and_unknown_options_are_refused():
    with pytest.raises(ConfigError, match="not square"):
        to_3d(nn.Sequential(nn.Conv2d(1, 1, (1, 3))))
    with pytest.raises(ConfigError, match="no 3D counterpart for Dropout2d"):
        to_3d(nn.Sequential(nn.Dropout2d()))
    with pytest.raises(ConfigError, match="initialisation must be one of"):
        adrenal_network(init_3d="kaiming")
    with pytest.raises(ConfigError, match="convolution must be one of"):
        adrenal_network(conv_3d="acs")
    task = [medmnist_task("adrenalmnist3d", False)]
    with pytest.raises(ConfigError, match="model.dims must be 2"):
        ResNetClassifier(task, backbone="resnet18", dims=4)
    with pytest.raises(ConfigError, match="dims=3 has no 3D weights"):
        ResNetClassifier(task, backbone="resnet18", dims=3, weights_path="resnet18.pth")


@pytest.mark.parametrize("grey_channels", [1, 3])
def test_volumes_are_read_whole_in_unit_range_as_the_file_holds_them(tmp_path, grey_channels):
    dm = SyntheticMedMNISTDataModule(
        str(tmp_path),
        ["adrenalmnist3d"],
        synthetic={"n_train": 4, "n_val": 2, "n_test": 2},
        volume_layout="volume",
        grey_channels=grey_channels,
        augment=False,
        joint_batches=True,
    )
    dm.setup()
    dataset = dm.datasets["adrenalmnist3d"]["train"]
    raw = np.asarray(dataset.images[1], dtype=np.float64) / 255.0  # (A, B, C) as stored
    image = dm.datasets["adrenalmnist3d"]["train"][1]["image"]
    assert image.shape == (grey_channels, 28, 28, 28)
    for channel in image:
        np.testing.assert_allclose(channel.numpy(), raw, atol=1e-7)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (grey_channels, 28, 28, 28)


def test_volume_options_that_cannot_serve_the_datasets_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="volume_layout must be one of"):
        SyntheticMedMNISTDataModule(str(tmp_path), ["adrenalmnist3d"], volume_layout="stack")
    with pytest.raises(ConfigError, match="2D augmentation"):
        SyntheticMedMNISTDataModule(str(tmp_path), ["adrenalmnist3d"], volume_layout="volume", augment=True)
    with pytest.raises(DatasetError, match="every task 3D with data.volume_layout=volume"):
        SyntheticMedMNISTDataModule(str(tmp_path), ["breastmnist", "adrenalmnist3d"], volume_layout="volume", joint_batches=True)
    with pytest.raises(ConfigError, match="volume_layout=volume reads them as one-channel volumes"):
        SyntheticMedMNISTDataModule(str(tmp_path), ["adrenalmnist3d"], grey_channels=1)


def test_their_adrenalmnist3d_recipe_runs_end_to_end_on_the_synthetic_twin(tmp_path):
    """The experiment as docs/results.md runs it, shrunk (8 volumes, one epoch): volumes read whole,
    the 3D network's parameter count that of their layer list with 3x3x3 kernels, test metrics."""
    import json

    from helpers import run

    done = run(
        "train.py",
        [
            "experiment=medmnist_yang2023",
            "yang2023_dataset=adrenalmnist3d",
            "preset=tiny",
            "trainer.max_epochs=1",
            "data.synthetic.n_train=8",
            "data.synthetic.n_val=4",
            "data.synthetic.n_test=4",
            "data.batch_size=4",
            "data.steps_per_epoch=null",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["num_parameters"] == authors_resnet18_parameters(1, 1, kernel=27)
    assert record["iterations"] == 2
    assert 0.0 <= record["test"]["adrenalmnist3d_auc"] <= 1.0
