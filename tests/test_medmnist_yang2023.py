"""Yang et al. 2023's MedMNIST baselines: the ResNet-18 (28) network, one-channel grey inputs, an
epoch as one pass, the fractional learning-rate schedule, best-validation-AUC model selection."""

import csv
import json
import math

import pytest
import torch

from helpers import MEDMNIST_SAMPLE, needs_medmnist_sample, run, train_and_read_test_metrics
from medmtl.data.medmnist import medmnist_task
from medmtl.data.medmnist_synthetic import SyntheticMedMNISTDataModule
from medmtl.errors import ConfigError
from medmtl.models.resnet_classifier import ResNetClassifier
from medmtl.schedules import multistep_at_fractions


def authors_resnet18_parameters(in_channels: int, outputs: int, kernel: int = 9) -> int:
    """The parameter count of their ResNet18(in_channels, outputs), from its layer list: a 3x3
    convolution and batch norm, four stages of two basic blocks (3x3 conv + BN twice, a 1x1 conv +
    BN shortcut where the shape changes), a linear layer on the 512 pooled channels. ``kernel``:
    the weights of one 3x3 kernel (9; 27 once made 3D, 3x3x3; 9 for 2.5D, 1x3x3)."""

    def block(c_in: int, c_out: int) -> int:
        shortcut = c_in * c_out + 2 * c_out if c_in != c_out else 0
        return c_in * c_out * kernel + 2 * c_out + c_out * c_out * kernel + 2 * c_out + shortcut

    stages = [(64, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    return in_channels * 64 * kernel + 2 * 64 + sum(block(a, b) for a, b in stages) + 512 * outputs + outputs


def yang_network(flag: str, in_channels: int) -> ResNetClassifier:
    return ResNetClassifier(
        [medmnist_task(flag, False)], backbone="resnet18", in_channels=in_channels, input_normalization="none", stem="cifar"
    )


@pytest.mark.parametrize("flag,in_channels,outputs", [("breastmnist", 1, 1), ("retinamnist", 3, 5)])
def test_the_cifar_stem_resnet18_has_the_parameters_of_their_layer_list(flag, in_channels, outputs):
    """Their binary network has two logits where ours has one (docs/results.md): one output fewer."""
    model = yang_network(flag, in_channels)
    assert sum(p.numel() for p in model.parameters()) == authors_resnet18_parameters(in_channels, outputs)


def test_a_28_pixel_image_reaches_the_last_stage_at_4x4_with_the_cifar_stem_and_1x1_without():
    image = torch.zeros(2, 1, 28, 28)
    assert yang_network("breastmnist", 1).encoder(image)[-1].shape == (2, 512, 4, 4)
    imagenet = ResNetClassifier([medmnist_task("breastmnist", False)], backbone="resnet18", in_channels=1, stem="imagenet")
    assert imagenet.encoder(image)[-1].shape == (2, 512, 1, 1)
    assert yang_network("breastmnist", 1)(image)["breastmnist"].shape == (2,)


def test_the_cifar_stem_keeps_pytorchs_default_initialisation_of_every_convolution():
    """PyTorch's default draws U(-b, b), b = 1 / sqrt(fan_in) (kaiming_uniform, a = sqrt 5), as in
    their code; torchvision's He-normal (fan-out) draws exceed that bound in every layer."""
    torch.manual_seed(0)
    convs = [m for m in yang_network("breastmnist", 1).encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3
    for conv in convs:
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-7
        assert conv.weight.abs().max() > 0.9 / math.sqrt(fan_in)  # the whole interval is used


def test_the_cifar_stem_refuses_imagenet_weights_and_unknown_stems_are_refused():
    task = [medmnist_task("breastmnist", False)]
    with pytest.raises(ConfigError, match="stem=cifar.*weights_path=null"):
        ResNetClassifier(task, backbone="resnet18", stem="cifar", weights_path="resnet18.pth")
    with pytest.raises(ConfigError, match="model.stem must be one of"):
        ResNetClassifier(task, backbone="resnet18", stem="deep")


def test_one_grey_channel_for_grey_datasets_three_for_colour_ones(tmp_path):
    dm = SyntheticMedMNISTDataModule(
        str(tmp_path), ["breastmnist", "retinamnist"], synthetic={"n_train": 4, "n_val": 2, "n_test": 2}, grey_channels=1
    )
    dm.setup()
    assert dm.datasets["breastmnist"]["train"][0]["image"].shape == (1, 28, 28)
    assert dm.datasets["retinamnist"]["train"][0]["image"].shape == (3, 28, 28)


@pytest.mark.parametrize(
    "flags,joint,grey,message",
    [
        (["breastmnist"], False, 2, "must be 1 or 3"),
        (["breastmnist", "nodulemnist3d"], False, 1, "nodulemnist3d are 3D"),
        (["breastmnist", "retinamnist"], True, 1, "concatenate one-channel grey images with the colour images of retinamnist"),
    ],
)
def test_grey_channels_that_cannot_serve_the_datasets_are_refused(tmp_path, flags, joint, grey, message):
    with pytest.raises(ConfigError, match=message):
        SyntheticMedMNISTDataModule(str(tmp_path), flags, joint_batches=joint, grey_channels=grey)


def test_one_dataset_with_joint_batches_trains_one_shuffled_pass_per_epoch_with_a_partial_last_batch(tmp_path):
    dm = SyntheticMedMNISTDataModule(
        str(tmp_path), ["breastmnist"], synthetic={"n_train": 10, "n_val": 2, "n_test": 2}, batch_size=4, joint_batches=True
    )
    dm.setup()
    loader = dm.train_dataloader()
    images = dm.datasets["breastmnist"]["train"].images

    def epoch(e: int) -> list[torch.Tensor]:
        loader.sampler.set_epoch(e)
        return list(loader)

    first = epoch(0)
    assert [len(b["image"]) for b in first] == [4, 4, 2]
    assert all(b["present/breastmnist"].all() for b in first)
    seen = torch.cat([b["image"] for b in first])  # every training image exactly once
    expected = torch.from_numpy(images).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    assert sorted(map(lambda t: hash(t.numpy().tobytes()), seen)) == sorted(map(lambda t: hash(t.numpy().tobytes()), expected))
    assert not torch.equal(seen, torch.cat([b["image"] for b in epoch(1)]))  # reshuffled
    assert torch.equal(seen, torch.cat([b["image"] for b in epoch(0)]))  # replayed from (seed, epoch)


def learning_rates(total_epochs: int, fractions=(0.5, 0.75)) -> list[float]:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = multistep_at_fractions(optimizer, total_epochs, fractions)
    rates = []
    for _ in range(total_epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_the_rate_drops_tenfold_at_half_and_three_quarters_of_the_epochs():
    """Their script: MultiStepLR(milestones=[0.5 E, 0.75 E], gamma=0.1), epochs 50 and 75 of 100."""
    rates = learning_rates(100)
    assert rates[:50] == pytest.approx([1e-3] * 50)
    assert rates[50:75] == pytest.approx([1e-4] * 25)
    assert rates[75:] == pytest.approx([1e-5] * 25)
    assert [r / 1e-3 for r in learning_rates(20)] == pytest.approx([1.0] * 10 + [0.1] * 5 + [0.01] * 5)


def test_fractions_outside_the_run_are_refused():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ConfigError, match=r"fractions must lie in \(0, 1\)"):
        multistep_at_fractions(optimizer, 10, (0.5, 1.5))


def test_the_experiment_tests_the_epoch_of_the_best_validation_auc(tmp_path):
    """Three epochs on the synthetic twin: the tested checkpoint is the epoch whose val/auc_mean in
    the CSV log is the highest (their model selection), and metrics.json says what was monitored."""
    done = run(
        "train.py",
        [
            "experiment=medmnist_yang2023",
            "preset=tiny",
            "trainer.max_epochs=3",
            "data.synthetic.n_train=16",
            "data.batch_size=8",
            "data.steps_per_epoch=null",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        val = [(int(r["epoch"]), float(r["val/auc_mean"])) for r in csv.DictReader(f) if r["val/auc_mean"]]
    assert len(val) == 3
    best_epoch = max(val, key=lambda ea: ea[1])[0]  # the first of equal maxima, as ModelCheckpoint keeps it
    assert record["best_checkpoint"].endswith(f"epoch{best_epoch:03d}.ckpt")
    assert record["selected_on"] == {"monitor": "val/auc_mean", "mode": "max", "best": pytest.approx(max(a for _, a in val))}
    assert record["best_val_loss"] is None
    assert record["num_parameters"] == authors_resnet18_parameters(1, 1)
    assert record["iterations"] == 3 * 2  # one pass of 16 samples in batches of 8 per epoch


@pytest.mark.slow
@pytest.mark.real_data
@needs_medmnist_sample
@pytest.mark.parametrize("dataset,epochs,margin", [("breastmnist", 5, 0.65), ("retinamnist", 8, 0.65)])
def test_a_few_epochs_of_their_recipe_on_the_real_files_are_far_above_chance(tmp_path, dataset, epochs, margin):
    """The reproduction's experiment (docs/results.md) on the official files, a few epochs (the rate
    cut at 50% and 75% of them): a test AUC far above chance (0.5). BreastMNIST: the 20-epoch run of
    docs/results.md reaches 0.91, their 100-epoch runs 0.901; RetinaMNIST (5 classes, one-vs-rest
    AUC): its validation AUC passed 0.80 at epoch 3 of the recorded run, their 100-epoch runs 0.717."""
    overrides = ["experiment=medmnist_yang2023", f"yang2023_dataset={dataset}", "data=medmnist", f"data.root={MEDMNIST_SAMPLE}"]
    test = train_and_read_test_metrics([*overrides, "trainer=cpu", f"trainer.max_epochs={epochs}"], tmp_path)
    assert test[f"{dataset}_auc"] > margin, test
