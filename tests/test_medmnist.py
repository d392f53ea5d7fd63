"""MedMNIST: files, MD5, the synthetic twin of every flag, samples, metrics, the UMedPT network."""

import math
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import MEDMNIST_SAMPLE, needs_medmnist_sample
from medmtl.data.errors import DatasetError
from medmtl.data.medmnist import (
    expected_md5,
    flag_info,
    locate,
    medmnist_info,
    medmnist_task,
    verify_md5,
)
from medmtl.data.medmnist_synthetic import SyntheticMedMNISTDataModule, write_synthetic_medmnist
from medmtl.metrics.medmnist import auc_and_accuracy
from medmtl.models.umedpt import UMedPT

REAL, needs_real = MEDMNIST_SAMPLE, needs_medmnist_sample


def test_a_missing_file_says_which_file_to_put_where(tmp_path):
    with pytest.raises(DatasetError, match=r"breastmnist_64\.npz.*zenodo.*" + str(tmp_path)):
        locate(tmp_path, "breastmnist", 64)
    with pytest.raises(DatasetError, match="Unknown MedMNIST dataset"):
        medmnist_task("cifar10")


@needs_real
def test_official_file_passes_its_md5_and_a_changed_copy_fails(tmp_path):
    verify_md5(REAL / "breastmnist.npz", expected_md5("breastmnist", 28))
    copy = tmp_path / "breastmnist.npz"
    shutil.copy(REAL / "breastmnist.npz", copy)
    with copy.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DatasetError, match="not the official MedMNIST file"):
        verify_md5(copy, expected_md5("breastmnist", 28))


def test_synthetic_twin_writes_the_official_keys_shapes_and_label_types_for_every_flag(tmp_path):
    flags = list(medmnist_info())
    write_synthetic_medmnist(tmp_path, flags, size=28, n=(4, 2, 2))
    for flag in flags:
        info = flag_info(flag)
        with np.load(tmp_path / f"{flag}.npz") as data:
            assert sorted(data.files) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
            images, labels = data["train_images"], data["train_labels"]
        expected = (4, 28, 28, 28) if flag.endswith("3d") else (4, 28, 28, 3) if info["n_channels"] == 3 else (4, 28, 28)
        assert images.shape == expected and images.dtype == np.uint8, flag
        n_labels = len(info["label"])
        assert labels.dtype == np.uint8 and labels.shape == ((4, n_labels) if flag == "chestmnist" else (4, 1)), flag
        assert labels.max() < (2 if flag == "chestmnist" else n_labels)


def test_samples_are_three_channel_images_or_stacks_of_slices(tmp_path):
    flags = ["breastmnist", "bloodmnist", "chestmnist", "nodulemnist3d", "retinamnist"]
    dm = SyntheticMedMNISTDataModule(str(tmp_path), flags, synthetic={"n_train": 4, "n_val": 2, "n_test": 2}, batch_size=2)
    dm.setup()
    shapes = {f: dm.datasets[f]["train"][0]["image"].shape for f in flags}
    assert shapes["breastmnist"] == shapes["bloodmnist"] == (3, 28, 28)
    assert shapes["nodulemnist3d"] == (28, 3, 28, 28)
    kinds = {t.name: (t.kind, t.num_outputs) for t in dm.tasks}
    assert kinds == {
        "breastmnist": ("binary", 1),
        "bloodmnist": ("multiclass", 8),
        "chestmnist": ("multilabel", 14),
        "nodulemnist3d": ("binary", 1),
        "retinamnist": ("multiclass", 5),
    }
    sample = dm.datasets["chestmnist"]["train"][0]
    assert sample["chestmnist"].shape == (14,) and sample["image"].min() >= -1 and sample["image"].max() <= 1


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    scores = rng.dirichlet(np.ones(4), 200)
    scores[np.arange(200), labels] += 0.3
    scores /= scores.sum(1, keepdims=True)
    auc, accuracy = auc_and_accuracy("multiclass", labels, scores)
    assert auc == pytest.approx(roc_auc_score(labels, scores, multi_class="ovr", average="macro"))
    assert accuracy == pytest.approx(np.mean(scores.argmax(1) == labels))
    multi = rng.integers(0, 2, (200, 3))
    multi_scores = np.clip(multi * 0.4 + rng.random((200, 3)) * 0.6, 0, 1)
    auc, accuracy = auc_and_accuracy("multilabel", multi, multi_scores)
    assert auc == pytest.approx(roc_auc_score(multi, multi_scores, average="macro"))
    assert accuracy == pytest.approx(np.mean((multi_scores > 0.5) == multi))


def _tasks(*flags):
    return [medmnist_task(f) for f in flags]


def test_umedpt_replaces_batch_norm_by_a_layer_norm_without_parameters():
    model = UMedPT(_tasks("breastmnist", "bloodmnist"), backbone="test_resnet")
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
    assert norms and all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 1 and not m.affine for m in norms)
    affine = UMedPT(_tasks("breastmnist"), backbone="test_resnet", norm="affine")
    assert all(m.affine for m in affine.modules() if isinstance(m, torch.nn.GroupNorm))
    kept = UMedPT(_tasks("breastmnist"), backbone="test_resnet", norm="batchnorm")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in kept.modules())


def test_umedpt_heads_2d_3d_and_parameter_groups():
    model = UMedPT(_tasks("bloodmnist", "chestmnist", "nodulemnist3d"), backbone="test_resnet").eval()
    out = model(torch.rand(2, 3, 28, 28), ["bloodmnist", "chestmnist"])
    assert out["bloodmnist"].shape == (2, 8) and out["chestmnist"].shape == (2, 14)
    volumes = torch.rand(2, 5, 3, 28, 28)
    assert model(volumes, ["nodulemnist3d"])["nodulemnist3d"].shape == (2,)
    with pytest.raises(ValueError, match="3D volumes"):
        model(torch.rand(2, 3, 28, 28), ["nodulemnist3d"])
    # a volume of identical slices: any weighted average of equal embeddings is that embedding
    one = torch.rand(1, 1, 3, 28, 28)
    head = model.classifiers["nodulemnist3d"]
    slice_logit = head.linear(model._embed(one[:, 0]))
    torch.testing.assert_close(model(one.expand(1, 6, 3, 28, 28), ["nodulemnist3d"])["nodulemnist3d"], slice_logit.squeeze(-1))
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in model.encoder.parameters()}


def test_umedpt_segmentation_task_uses_the_shared_decoder():
    from medmtl import losses
    from medmtl.tasks import Task

    model = UMedPT(
        [Task("lesion", "segmentation", losses.binary_cross_entropy), medmnist_task("breastmnist")], backbone="test_resnet"
    )
    assert model(torch.rand(2, 3, 32, 32), ["lesion"])["lesion"].shape == (2, 32, 32)
    assert model.decoder is not None and model.path_modules("lesion")[1] is model.decoder


def test_umedpt_reads_swin_features_channels_last():
    """timm's Swin returns NHWC feature maps: the pooled embedding must still be over H and W."""
    model = UMedPT(_tasks("bloodmnist"), backbone="swin_tiny_patch4_window7_224").eval()
    with torch.no_grad():
        embedding = model._embed(torch.rand(1, 3, 224, 224))
    assert embedding.shape == (1, 768)
    assert model(torch.rand(1, 3, 224, 224))["bloodmnist"].shape == (1, 8)


def test_joint_batches_concatenate_one_batch_per_task_with_presence_masks(tmp_path):
    dm = SyntheticMedMNISTDataModule(
        str(tmp_path),
        ["breastmnist", "bloodmnist", "chestmnist"],
        synthetic={"n_train": 8, "n_val": 2, "n_test": 2},
        batch_size=3,
        joint_batches=True,
        steps_per_epoch=2,
    )
    dm.setup()
    assert not dm.separate_task_inputs
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    batch = batches[0]
    assert batch["image"].shape == (9, 3, 28, 28)
    assert batch["present/breastmnist"].tolist() == [True] * 3 + [False] * 6
    assert batch["present/chestmnist"].tolist() == [False] * 6 + [True] * 3
    assert batch["bloodmnist"].dtype == torch.int64 and batch["chestmnist"].shape == (9, 14)
    assert (batch["dataset"] == torch.tensor([0] * 3 + [1] * 3 + [2] * 3)).all()
    # each task's loss only sees its own rows: a huge error on another task's rows changes nothing
    task = dm.tasks[1]
    logits = torch.zeros(9, 8)
    reference = task.compute_loss(logits, batch)
    logits[:3] = 1e4
    assert torch.equal(task.compute_loss(logits, batch), reference)


def test_a_3d_task_draws_its_own_batch_size_and_the_epoch_covers_every_training_set(tmp_path):
    """batch_size_3d: volumes per step of a 3D task (each is D slices for the encoder); the default
    epoch is the most batches any task needs to see its training set once."""
    dm = SyntheticMedMNISTDataModule(
        str(tmp_path),
        ["breastmnist", "adrenalmnist3d"],
        synthetic={"n_train": 12, "n_val": 2, "n_test": 2},
        batch_size=4,
        batch_size_3d=2,
    )
    dm.setup()
    assert next(iter(dm.task_dataloader("breastmnist")))["image"].shape[0] == 4
    assert next(iter(dm.task_dataloader("adrenalmnist3d")))["image"].shape[0] == 2
    assert len(dm.train_dataloader()) == 12 // 2  # the 3D task: 6 batches of 2; BreastMNIST: 3 of 4
    same = SyntheticMedMNISTDataModule(str(tmp_path), ["breastmnist", "adrenalmnist3d"], synthetic={"n_train": 12}, batch_size=4)
    same.setup()
    assert next(iter(same.task_dataloader("adrenalmnist3d")))["image"].shape[0] == 4


def test_joint_batches_refuse_3d_tasks(tmp_path):
    with pytest.raises(DatasetError, match="3D.*optim=ga"):
        SyntheticMedMNISTDataModule(str(tmp_path), ["breastmnist", "nodulemnist3d"], joint_batches=True)


@pytest.mark.parametrize("norm,affine_left", [("layernorm_noaffine", 0), ("affine", None)])
def test_swin_layer_norms_lose_their_parameters_only_without_affine(norm, affine_left):
    """Schafer et al. 2024: UMedPT's layer norms have no trainable scale and shift (UMedPT-affine keeps them)."""
    import timm

    model = UMedPT(_tasks("bloodmnist"), backbone="swin_tiny_patch4_window7_224", norm=norm)
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    with_affine = sum(m.weight is not None for m in norms)
    reference = timm.create_model("swin_tiny_patch4_window7_224", features_only=True)
    n_reference = sum(isinstance(m, torch.nn.LayerNorm) for m in reference.modules())
    assert len(norms) == n_reference > 10
    assert with_affine == (n_reference if affine_left is None else affine_left)
    if norm == "layernorm_noaffine":  # a layer norm without parameters: zero mean, unit variance per token
        x = torch.randn(2, 5, norms[0].normalized_shape[0]) * 3 + 1
        y = norms[0](x)
        torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist", "chestmnist", "organmnist3d"])
def test_normalised_losses_are_one_at_chance(flag):
    """Schafer et al. 2024: each loss scaled so that an uninformed prediction scores 1 (CE / log C,
    BCE x log2 e): zero logits are the uniform prediction of every head kind."""
    task = medmnist_task(flag)
    logits = torch.zeros(4) if task.kind == "binary" else torch.zeros(4, task.num_outputs)  # the heads' shapes
    n = task.num_outputs
    target = (
        torch.zeros(4, n) if task.kind == "multilabel" else (torch.zeros(4) if task.kind == "binary" else torch.arange(4) % n)
    )
    torch.testing.assert_close(task.loss(logits, target).mean(), torch.tensor(1.0))
    raw = medmnist_task(flag, loss_normalization=False).loss(logits, target).mean()
    expected = math.log(n) if task.kind == "multiclass" else math.log(2.0)
    torch.testing.assert_close(raw, torch.tensor(expected))


def test_weak_augmentation_never_flips_and_replays_from_its_seed():
    from medmtl.data.weak_augmentation import WeakAugmentation

    augmentation = WeakAugmentation()
    for seed in range(200):
        p = augmentation.draw(seed)
        assert torch.linalg.det(augmentation.matrix(p)[:, :2]) > 0  # orientation kept: no flip, no mirror
        assert abs(p["angle"]) <= 10 and 0.9 <= p["scale"] <= 1.1
    image = torch.rand(3, 28, 28)
    torch.testing.assert_close(augmentation(image, 5), augmentation(image, 5))
    assert not torch.allclose(augmentation(image, 5), augmentation(image, 6))
    out = augmentation(image, 7)
    assert out.min() >= 0 and out.max() <= 1
    volume = image.expand(4, 3, 28, 28)  # four equal slices get the same geometry
    moved = augmentation(volume, 9)
    for k in range(1, 4):
        torch.testing.assert_close(moved[k], moved[0])
    still = WeakAugmentation(max_rotation=0, max_shift=0, scale=(1, 1), max_contrast=0, max_brightness=0)
    torch.testing.assert_close(still(image, 3), image, atol=1e-5, rtol=0)


def test_training_samples_are_augmented_in_unit_range_and_evaluation_samples_are_not(tmp_path):
    dm = SyntheticMedMNISTDataModule(
        str(tmp_path), ["bloodmnist"], synthetic={"n_train": 4, "n_val": 2, "n_test": 2}, batch_size=2, augment=True
    )
    dm.setup()
    train, val = dm.datasets["bloodmnist"]["train"], dm.datasets["bloodmnist"]["val"]
    plain = train[0]["image"]
    assert plain.min() >= 0 and plain.max() <= 1 and plain.max() > 0.5
    torch.testing.assert_close(plain, torch.from_numpy(train.images[0]).float().permute(2, 0, 1) / 255)
    assert not torch.allclose(train[(0, 11)]["image"], plain)  # a sampler key carries an augmentation seed
    torch.testing.assert_close(val[(0, 11)]["image"], val[0]["image"])  # evaluation is never augmented
