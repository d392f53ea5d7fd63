"""The REFUGE loader on a generated official layout."""

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import SMALL_SPEC
from medmtl.data import refuge_layout as layout
from medmtl.data.heatmap import centre_of_mass
from medmtl.data.images import decode_refuge_mask, read_refuge_mask
from medmtl.data.refuge import RefugeDataModule
from medmtl.data.refuge_cache import ensure_cache
from medmtl.data.refuge_synthetic import generate_synthetic_refuge


def test_generation_is_idempotent_and_refuses_other_parameters(refuge_root):
    before = sorted(p.stat().st_mtime_ns for p in refuge_root.rglob("*.jpg"))
    generate_synthetic_refuge(refuge_root, SMALL_SPEC)
    assert sorted(p.stat().st_mtime_ns for p in refuge_root.rglob("*.jpg")) == before
    with pytest.raises(Exception, match="other parameters"):
        generate_synthetic_refuge(refuge_root, type(SMALL_SPEC)(n_train=3))


def test_scan_counts_labels_and_official_spreadsheets(refuge_root):
    samples = layout.scan_refuge(refuge_root)
    by_split = {s: [x for x in samples if x.split == s] for s in layout.SPLITS}
    assert [len(by_split[s]) for s in layout.SPLITS] == [SMALL_SPEC.n_train, SMALL_SPEC.n_val, SMALL_SPEC.n_test]
    # training labels follow the class folders and the g/n prefix
    for s in by_split["train"]:
        assert s.label == (s.image.parent.name == "Glaucoma") == s.id.startswith("g")
    # validation labels come from the xlsx with the official column names
    frame = pd.read_excel(refuge_root / layout.VAL_XLSX)
    assert list(frame.columns) == ["ImgName", "Glaucoma Label", "Fovea_X", "Fovea_Y"]
    truth = dict(zip(frame["ImgName"].str.replace(".jpg", ""), frame["Glaucoma Label"]))
    assert {s.id: s.label for s in by_split["val"]} == truth
    assert list(pd.read_excel(refuge_root / layout.TRAIN_XLSX).columns) == ["ID", "ImgName", "Fovea_X", "Fovea_Y"]
    # both classes are present in every split of the generated set
    assert all(0 < np.mean([s.label for s in by_split[k]]) < 1 for k in layout.SPLITS)


def test_masks_use_refuge_encoding_and_disc_contains_cup(refuge_root):
    for sample in layout.scan_refuge(refuge_root)[:12]:
        mask = read_refuge_mask(sample.mask)
        assert set(np.unique(mask)) <= {0, 128, 255}
        od, oc = decode_refuge_mask(mask)
        assert od.sum() > oc.sum() > 0
        assert not np.any(oc & (1 - od)), "optic cup outside the optic disc"


def test_mask_decoding_follows_the_official_encoding():
    mask = np.array([[0, 128, 255]], np.uint8)
    od, oc = decode_refuge_mask(mask)
    assert od.tolist() == [[1, 1, 0]] and oc.tolist() == [[1, 0, 0]]


def test_cv_folds_are_stratified_disjoint_and_independent_of_training_seed(refuge_root):
    pool = SMALL_SPEC.n_train + SMALL_SPEC.n_val
    validation_ids = []
    for fold in range(5):
        dm = RefugeDataModule(str(refuge_root), fold=fold, image_size=64, augment=False)
        dm.setup()
        train_ids = {s.id for s in dm.datasets["train"].samples}
        val_ids = {s.id for s in dm.datasets["val"].samples}
        assert not train_ids & val_ids and len(train_ids | val_ids) == pool
        assert len(dm.datasets["test"]) == SMALL_SPEC.n_test
        validation_ids.append(val_ids)
        positives = dm.datasets["val"].labels().sum()
        total_positive = sum(s.label for s in layout.scan_refuge(refuge_root, ["train", "val"]))
        assert abs(positives - total_positive / 5) <= 1, "folds are not stratified"
    assert set().union(*validation_ids) == {s.id for s in layout.scan_refuge(refuge_root, ["train", "val"])}
    same = RefugeDataModule(str(refuge_root), fold=2, image_size=64, seed=999)
    same.setup()
    assert {s.id for s in same.datasets["val"].samples} == validation_ids[2]


def test_official_protocol_uses_the_challenge_splits(refuge_root):
    dm = RefugeDataModule(str(refuge_root), protocol="official", image_size=64, augment=False)
    dm.setup()
    assert {s.split for s in dm.datasets["train"].samples} == {"train"}
    assert {s.split for s in dm.datasets["val"].samples} == {"val"}
    assert len(dm.datasets["test"]) == SMALL_SPEC.n_test


def test_fovea_coordinates_after_resizing(refuge_root):
    size = 64
    dm = RefugeDataModule(str(refuge_root), protocol="official", image_size=size, augment=False)
    dm.setup()
    dataset = dm.datasets["train"]
    for index in range(4):
        item = dataset[index]
        sample = dataset.samples[index]
        width, height = SMALL_SPEC.train_size
        # independent mapping: pixel centres scale by size/width, size/height
        expected = ((sample.fovea_xy[0] + 0.5) * size / width - 0.5, (sample.fovea_xy[1] + 0.5) * size / height - 0.5)
        assert item["fovea_xy"].tolist() == pytest.approx(expected, abs=1e-4)
        assert item["original_wh"].tolist() == [width, height]
        peak = centre_of_mass(item["fovea_heatmap"][None])[0]
        assert peak.tolist() == pytest.approx(expected, abs=0.5)


def test_batch_shapes_and_value_ranges(refuge_root):
    dm = RefugeDataModule(str(refuge_root), image_size=64, batch_size=4, augment=True)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and 0.0 <= batch["image"].min() <= batch["image"].max() <= 1.0
    assert batch["od"].shape == batch["oc"].shape == batch["fovea_heatmap"].shape == (4, 64, 64)
    assert set(torch.unique(batch["od"]).tolist()) <= {0.0, 1.0}
    assert torch.all(batch["oc"] <= batch["od"]), "augmentation moved the cup out of the disc"


def test_augmentation_moves_masks_and_fovea_with_the_image(refuge_root):
    import albumentations as A

    from medmtl.data.refuge import RefugeDataset

    samples = layout.scan_refuge(refuge_root, ["test"])[:1]
    flip = A.Compose([A.HorizontalFlip(p=1.0)], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))
    files = ensure_cache(RefugeDataModule(str(refuge_root)).cache, samples, 64)
    plain = RefugeDataset(samples, files, 64, 50.0)
    flipped = RefugeDataset(samples, files, 64, 50.0, transform=flip)
    a, b = plain[0], flipped[0]
    assert torch.equal(b["od"], a["od"].flip(-1)) and torch.equal(b["image"], a["image"].flip(-1))
    assert b["fovea_xy"][0].item() == pytest.approx(63 - a["fovea_xy"][0].item(), abs=1.0)


def test_ground_truth_vcdr_separates_the_classes(refuge_root):
    dm = RefugeDataModule(str(refuge_root), image_size=128, augment=False)
    dm.setup()
    vcdr, labels = dm.datasets["train"].ground_truth_vcdr(), dm.datasets["train"].labels()
    assert vcdr[labels == 1].mean() > vcdr[labels == 0].mean() + 0.05


def test_augmentation_depends_on_seed_and_epoch_only_not_on_workers(refuge_root):
    """The sampler's (index, seed) keys fix every augmentation: 0 or 2 workers give the same batches,
    the same sample twice in one epoch is augmented differently, another epoch differs."""
    from medmtl.data.refuge import RefugeDataset, training_augmentation
    from medmtl.data.sampling import EpochSeededSampler

    sample = layout.scan_refuge(refuge_root, ["train"])[0]
    files = ensure_cache(RefugeDataModule(str(refuge_root)).cache, [sample, sample], 32)
    twice = RefugeDataset([sample, sample], files, 32, 50.0, transform=training_augmentation(seed=0))

    def load(epoch, workers):
        sampler = EpochSeededSampler(len(twice), seed=7)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(twice, batch_size=1, sampler=sampler, num_workers=workers)
        return [b["image"] for b in loader]

    first = load(epoch=3, workers=0)
    assert all(torch.equal(a, b) for a, b in zip(first, load(epoch=3, workers=2))), "workers changed the augmentations"
    assert not torch.equal(first[0], first[1]), "two draws of one sample got the same augmentation"
    assert not all(torch.equal(a, b) for a, b in zip(first, load(epoch=4, workers=0))), "epochs replay one augmentation"
