"""IDRiD datamodule on the shared sample: cache, presence flags, the missing-mask policy, and
partial labels that never give a NaN or a gradient to an absent task."""

import shutil

import pytest
import torch

from helpers import IDRID_SAMPLE as REAL
from helpers import needs_idrid_sample as needs_real
from medmtl.data.idrid import IdridDataModule, idrid_tasks
from medmtl.tasks import compute_losses

RESOLUTION = (32, 48)


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    """A copy of the shared sample (the cache is written next to the data)."""
    root = tmp_path_factory.mktemp("idrid") / "idrid"
    shutil.copytree(REAL, root)
    return root


@needs_real
def test_cache_is_built_once_and_timed(sample_root):
    dm = IdridDataModule(str(sample_root), grades=[], resolution=RESOLUTION)
    dm.setup()
    assert dm.cache_seconds > 0
    again = IdridDataModule(str(sample_root), grades=[], resolution=RESOLUTION)
    again.setup()
    assert again.cache_seconds == 0.0
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 16, "val": 4, "test": 0}


@needs_real
@pytest.mark.parametrize("policy,ma_present", [("mask", False), ("negative", True)])
def test_missing_lesion_masks_are_masked_out_or_negative(sample_root, policy, ma_present):
    dm = IdridDataModule(str(sample_root), skip_bad_samples=True, resolution=RESOLUTION, missing_mask=policy)
    dm.setup()
    item = dm.datasets["train"][0]
    assert item["image"].shape == (3, *RESOLUTION)
    assert bool(item["present/od"]) and bool(item["present/he"])
    assert bool(item["present/ma"]) is ma_present and not item["ma"].any()
    assert not bool(item["present/retinopathy"]) and not bool(item["present/edema"])  # segmentation images
    od = item["od"]
    assert set(od.unique().tolist()) <= {0.0, 1.0} and 0 < od.mean() < 0.1


@needs_real
def test_partial_labels_give_no_nan_and_no_gradient_to_an_absent_task(sample_root):
    dm = IdridDataModule(str(sample_root), skip_bad_samples=True, resolution=RESOLUTION, missing_mask="mask")
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    tasks = idrid_tasks()
    torch.manual_seed(0)
    outputs = {
        t.name: torch.randn((4, t.num_outputs) if t.kind == "multiclass" else (4, *RESOLUTION), requires_grad=True) for t in tasks
    }
    losses = compute_losses(tasks, outputs, batch)
    assert set(losses) == {"od", "he"}  # grades and the absent lesions have no labelled sample here
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name in ("retinopathy", "edema", "ma", "ex", "se"):
        assert outputs[name].grad is None, f"absent task {name} got a gradient"
    assert outputs["od"].grad.abs().sum() > 0


def test_a_mixed_batch_uses_only_the_labelled_samples_of_each_task():
    tasks = {t.name: t for t in idrid_tasks(["od"])}
    batch = {
        "retinopathy": torch.tensor([3, 0]),
        "present/retinopathy": torch.tensor([True, False]),
        "od": torch.zeros(2, 4, 4),
        "present/od": torch.tensor([False, True]),
    }
    logits = torch.zeros(2, 5, requires_grad=True)
    loss = tasks["retinopathy"].compute_loss(logits, batch)
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0  # sample 1 has no grade
    # CE + focal at uniform logits: log 5 + (1 - 1/5)^2 log 5
    assert float(loss) == pytest.approx(torch.log(torch.tensor(5.0)).item() * (1 + 0.8**2))


def test_synthetic_twin_has_the_official_layout_and_its_quirks(tmp_path):
    from medmtl.data.idrid_layout import read_grading, scan_idrid
    from medmtl.data.idrid_synthetic import SyntheticIdridDataModule

    dm = SyntheticIdridDataModule(str(tmp_path / "idrid"), resolution=(32, 48))
    dm.setup()
    train = scan_idrid(tmp_path / "idrid", "train")
    assert sum(s.is_segmentation for s in train) == 12 and sum(not s.is_segmentation for s in train) == 12
    csv = next((tmp_path / "idrid").rglob("a. IDRiD_Disease Grading_Training Labels.csv"))
    raw = csv.read_bytes()
    assert b"\r\n" in raw and b"Risk of macular edema ,," in raw  # CRLF, stray space, empty columns
    assert len(read_grading(csv)) == 12
    mask = next((tmp_path / "idrid").rglob("*_OD.tif"))
    import numpy as np
    from PIL import Image

    assert Image.open(mask).mode == "P" and set(np.unique(np.array(Image.open(mask)))) == {0, 1}
    assert any(s.masks["se"] is None for s in train if s.is_segmentation)  # some masks absent, as in IDRiD
    # val_fraction 0.2 of each image set: round(2.4) = 2 segmentation + 2 grading images
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 20, "val": 4, "test": 12}
