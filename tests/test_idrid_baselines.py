"""Roy 2025's single-task baselines and Table 1: the ResNet classifier, the DeepLabV3+ segmenter
(checked against segmentation-models-pytorch's own network), one task family per run, the
training augmentation, and the three arms of the experiment training on the synthetic twin."""

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from hydra.utils import instantiate

from helpers import compose_train, quiet_trainer
from medmtl.data.errors import DatasetError
from medmtl.data.idrid import idrid_tasks
from medmtl.data.idrid_synthetic import SyntheticIdridDataModule
from medmtl.models.deeplabv3p import DeepLabV3Plus
from medmtl.models.resnet_classifier import ResNetClassifier
from medmtl.module import MultiTaskModule

LESIONS = ["ma", "he", "ex", "se", "od"]


def test_deeplabv3p_equals_smp_with_one_output_channel_per_lesion():
    """Our per-task 1x1 heads, up-sampled, are smp's segmentation head with the heads stacked."""
    torch.manual_seed(0)
    ours = DeepLabV3Plus(idrid_tasks(LESIONS, grades=[]), backbone="resnet18", decoder_channels=32).eval()
    reference = smp.DeepLabV3Plus(
        "resnet18",
        encoder_weights=None,
        encoder_output_stride=16,
        decoder_channels=32,
        decoder_atrous_rates=(6, 12, 18),
        classes=len(LESIONS),
    ).eval()
    reference.encoder.load_state_dict(ours.encoder.state_dict())
    reference.decoder.load_state_dict(ours.decoder.state_dict())
    conv = reference.segmentation_head[0]
    with torch.no_grad():
        conv.weight.copy_(torch.cat([ours.dense_heads[name].weight for name in LESIONS]))
        conv.bias.copy_(torch.cat([ours.dense_heads[name].bias for name in LESIONS]))
        image = torch.rand(2, 3, 64, 96)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet statistics (our input normalisation)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        expected = reference((image - mean) / std)
        outputs = ours(image)
    torch.testing.assert_close(torch.stack([outputs[name] for name in LESIONS], dim=1), expected, rtol=1e-4, atol=1e-5)


def test_deeplabv3p_classification_tasks_skip_the_decoder():
    model = DeepLabV3Plus(idrid_tasks(["od"]), backbone="resnet18", decoder_channels=16)
    outputs = model(torch.rand(2, 3, 32, 48), tasks=["retinopathy"])
    outputs["retinopathy"].sum().backward()
    assert outputs["retinopathy"].shape == (2, 5)
    assert all(p.grad is None for p in model.decoder.parameters()), "a grading forward ran the decoder"
    assert model.last_shared_layer() in set(model.encoder.parameters())


def test_resnet_classifier_is_average_pool_then_linear_and_refuses_lesions():
    model = ResNetClassifier(idrid_tasks([], grades=["retinopathy", "edema"]), backbone="resnet18").eval()
    image = torch.rand(2, 3, 45, 70)  # any size: global pooling
    with torch.no_grad():
        pooled = model.encoder(model.input_normalization(image))[-1].mean(dim=(-2, -1))
        outputs = model(image)
        torch.testing.assert_close(outputs["edema"], model.classifiers["edema"](pooled))
    assert outputs["retinopathy"].shape == (2, 5) and outputs["edema"].shape == (2, 3)
    with pytest.raises(ValueError, match="no decoder for the pixel-level tasks \\['od'\\]"):
        ResNetClassifier(idrid_tasks(["od"]), backbone="resnet18")


@pytest.fixture(scope="module")
def idrid_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("idrid_baselines") / "idrid"
    SyntheticIdridDataModule(str(root), resolution=(32, 48)).prepare_data()
    return root


@pytest.mark.parametrize("family", ["grades", "lesions"])
def test_one_task_family_keeps_only_the_image_set_labelled_for_it(idrid_root, family):
    options = {"lesions": []} if family == "grades" else {"grades": []}
    dm = SyntheticIdridDataModule(str(idrid_root), resolution=(32, 48), **options)
    dm.setup()
    kinds = {t.kind for t in dm.tasks}
    assert kinds == ({"multiclass"} if family == "grades" else {"segmentation"})
    for split, dataset in dm.datasets.items():
        assert len(dataset) > 0, split
        assert all(s.is_segmentation == (family == "lesions") for s in dataset.samples), split
    everything = SyntheticIdridDataModule(str(idrid_root), resolution=(32, 48))
    everything.setup()
    # the test images keep their index whatever the task subset (runs' examples line up)
    whole = {s.name: s.position for s in everything.datasets["test"].samples}
    assert all(whole[s.name] == s.position for s in dm.datasets["test"].samples)


def test_augmentation_moves_masks_with_the_image_and_replays_by_seed(idrid_root):
    dm = SyntheticIdridDataModule(str(idrid_root), resolution=(64, 96), grades=[])
    dm.setup()
    train = dm.datasets["train"]
    plain = SyntheticIdridDataModule(str(idrid_root), resolution=(64, 96), grades=[], augment=False)
    plain.setup()
    index = next(i for i, s in enumerate(train.samples) if s.masks.get("od") is not None)
    original = plain.datasets["train"][index]
    changed = 0
    for seed in range(8):
        item = train[(index, seed)]
        assert torch.equal(item["image"], train[(index, seed)]["image"]), "the same key must give the same sample"
        assert set(item["od"].unique().tolist()) <= {0.0, 1.0}
        changed += not torch.equal(item["image"], original["image"])
        # the synthetic optic disc is the brightest structure: it stays under its (moved) mask
        brightness = item["image"].mean(dim=0)
        disc = item["od"] > 0.5
        assert brightness[disc].mean() > brightness[~disc].mean() + 0.1, seed
    assert changed >= 4, "augmentation rarely changed the image"
    assert torch.equal(dm.datasets["val"][0]["image"], plain.datasets["val"][0]["image"]), "validation is augmented"


@pytest.mark.parametrize("arm", ["resnet50", "deeplabv3p", "moe"])
def test_each_table1_arm_trains_on_its_tasks(arm, idrid_root, tmp_path):
    cfg = compose_train(
        [
            "experiment=idrid_table1",
            "preset=tiny",
            f"idrid_arm={arm}",
            f"paths.log_dir={tmp_path}",
            "model.backbone=resnet18" if arm != "moe" else "model.backbone=resnet18",
        ]
    )
    dm = instantiate(cfg.data, root=str(idrid_root), resolution=[32, 48])
    expected = {"resnet50": {"retinopathy", "edema"}, "deeplabv3p": set(LESIONS), "moe": {"retinopathy", "edema"} | set(LESIONS)}[
        arm
    ]
    assert {t.name for t in dm.tasks} == expected
    torch.manual_seed(0)
    module = MultiTaskModule(
        model=instantiate(cfg.model),
        strategy=instantiate(cfg.optim.strategy),
        tasks=dm.tasks,
        optimizer=instantiate(cfg.optim.optimizer),
        backbone_lr_scale=cfg.optim.backbone_lr_scale,
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, deterministic=True)
    trainer.fit(module, datamodule=dm)
    (tested,) = trainer.test(module, datamodule=dm, verbose=False)
    metric = {"resnet50": "test/edema_acc", "deeplabv3p": "test/od_dice", "moe": "test/od_dice"}[arm]
    assert np.isfinite(tested[metric])
    assert all(torch.isfinite(p).all() for p in module.parameters())
    examples = module.test_predictions
    assert list(examples["example_lesion_names"]) == [n for n in LESIONS if n in expected]
    assert list(examples["example_grade_names"]) == [n for n in ("retinopathy", "edema") if n in expected]


def test_no_validation_set_trains_on_every_training_image(idrid_root):
    """Roy 2025's protocol (data.val_fraction=0): nothing held out."""
    held_out = SyntheticIdridDataModule(str(idrid_root), resolution=(32, 48))
    everything = SyntheticIdridDataModule(str(idrid_root), resolution=(32, 48), val_fraction=0.0)
    held_out.setup()
    everything.setup()
    assert len(everything.datasets["val"]) == 0
    assert len(everything.datasets["train"]) == len(held_out.datasets["train"]) + len(held_out.datasets["val"])


@pytest.mark.parametrize("optim_name", ["mtl_io", "pcgrad", "mgda_ub", "gradnorm", "ga", "stl"])
def test_deeplabv3p_on_every_idrid_task_trains_with_other_strategies(optim_name, idrid_root, tmp_path):
    """With the grades added, DeepLabV3+ is a hard-sharing multi-task network (the MoE model
    without experts): the strategies that need a shared representation, per-task paths or task
    batches all train it with partial labels."""
    cfg = compose_train([f"optim={optim_name}", f"paths.log_dir={tmp_path}"])
    dm = SyntheticIdridDataModule(str(idrid_root), resolution=(32, 48), batch_size=4, lesions=["od", "he"])
    torch.manual_seed(0)
    module = MultiTaskModule(
        model=lambda tasks: DeepLabV3Plus(tasks, backbone="resnet18", decoder_channels=16),
        strategy=instantiate(cfg.optim.strategy),
        tasks=dm.tasks,
        optimizer=instantiate(cfg.optim.optimizer),
        backbone_lr_scale=0.1,
    )
    before = [p.detach().clone() for p in module.parameters()]
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    assert module.iterations == 2
    assert all(torch.isfinite(p).all() for p in module.parameters()), "a NaN reached the weights"
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters())), "nothing was trained"


@pytest.mark.parametrize(
    "options,error,message",
    [
        ({"lesions": ["od", "cotton"]}, DatasetError, "Unknown IDRiD tasks \\['cotton'\\]"),
        ({"grades": ["dme"]}, DatasetError, "Unknown IDRiD tasks \\['dme'\\]"),
        ({"lesions": [], "grades": []}, DatasetError, "both empty"),
        ({"missing_mask": "zero"}, ValueError, "data.missing_mask must be one of"),
    ],
)
def test_bad_idrid_options_are_one_sentence_at_construction(idrid_root, options, error, message):
    with pytest.raises(error, match=message):
        SyntheticIdridDataModule(str(idrid_root), resolution=(32, 48), **options)


def test_deeplabv3p_names_the_input_multiple_it_needs():
    model = DeepLabV3Plus(idrid_tasks(["od"], grades=[]), backbone="resnet18", decoder_channels=16)
    with pytest.raises(ValueError, match="needs image sides divisible by 16, got \\(40, 48\\)"):
        model(torch.rand(1, 3, 40, 48))


def test_missing_idrid_folder_is_one_sentence_from_the_cli(tmp_path):
    from helpers import run

    result = run("train.py", ["experiment=idrid_table1", "data=idrid", f"data.root={tmp_path / 'absent'}"], tmp_path)
    assert result.returncode != 0
    assert "IDRiD root folder not found" in result.stderr and "Traceback" not in result.stderr
