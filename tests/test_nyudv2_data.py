"""NYUDv2: the synthetic twin's geometry is exact, both official layouts read into one convention,
a horizontal flip keeps normals consistent with depth (only when their x component changes sign),
and every malformed file is refused in one sentence that names it."""

import numpy as np
import pytest
import torch

from medmtl.data.errors import DatasetError
from medmtl.data.nyudv2 import NYUDv2DataModule, horizontal_flip, mtan_scale_crop, scale_and_pad, survey_zoom
from medmtl.data.nyudv2_synthetic import SyntheticNYUDv2DataModule, camera_rays, render_scene, write_synthetic_nyudv2

SIZE = (48, 64)


@pytest.fixture(scope="module")
def scene():
    return render_scene(np.random.default_rng(5), *SIZE, layout="nyud_mt")


def normals_from_depth(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normals estimated from the depth map alone: the cross product of the back-projected
    neighbours' differences, turned to face the camera; and the pixels where they are defined."""
    points = depth[..., None] * camera_rays(*depth.shape)
    right, down = points[:-1, 1:] - points[:-1, :-1], points[1:, :-1] - points[:-1, :-1]
    normal = np.cross(right, down)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
    normal *= -np.sign((normal * points[:-1, :-1]).sum(-1, keepdims=True))
    return normal


def same_surface(scene: dict, labels: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Pixels (v, u) whose right and lower neighbours lie on the same plane (same label and normal), valid."""
    same = np.ones((labels.shape[0] - 1, labels.shape[1] - 1), dtype=bool)
    for dv, du in ((0, 1), (1, 0)):
        other_l = labels[dv : dv + same.shape[0], du : du + same.shape[1]]
        other_n = normals[dv : dv + same.shape[0], du : du + same.shape[1]]
        same &= (other_l == labels[:-1, :-1]) & (np.abs(other_n - normals[:-1, :-1]).sum(-1) < 1e-6)
    return same & (labels[:-1, :-1] >= 0)


def test_twin_pixels_obey_their_plane_equation(scene):
    """n . X is constant on each plane: compare every pixel with its right neighbour on the same surface."""
    points = scene["depth"][..., None] * camera_rays(*SIZE)
    offset = (scene["normals"] * points).sum(-1)  # n . X = c for the pixel's plane
    same = (scene["semseg"][:, 1:] == scene["semseg"][:, :-1]) & (scene["semseg"][:, 1:] >= 0)
    same &= np.abs(scene["normals"][:, 1:] - scene["normals"][:, :-1]).sum(-1) < 1e-6
    assert same.sum() > 0.5 * same.size
    assert np.abs(offset[:, 1:] - offset[:, :-1])[same].max() < 1e-4
    valid = scene["depth"] > 0
    assert np.allclose(np.linalg.norm(scene["normals"][valid], axis=-1), 1.0, atol=1e-6)
    assert np.array_equal(valid, scene["semseg"] >= 0) and not scene["normals"][~valid].any()
    assert (scene["normals"][valid] * points[valid]).sum(-1).max() < 0, "normals face the camera"


def test_twin_normals_agree_with_normals_estimated_from_depth(scene):
    estimated = normals_from_depth(scene["depth"])
    interior = same_surface(scene, scene["semseg"], scene["normals"])
    cosine = (estimated * scene["normals"][:-1, :-1]).sum(-1)[interior]
    assert interior.sum() > 0.5 * interior.size and cosine.min() > 0.999


def test_horizontal_flip_negates_the_normals_x_component(scene):
    sample = {
        "image": torch.from_numpy(scene["image"]).permute(2, 0, 1),
        "depth": torch.from_numpy(scene["depth"]),
        "normals": torch.from_numpy(scene["normals"]).permute(2, 0, 1),
        "semseg": torch.from_numpy(scene["semseg"]),
    }
    flipped = horizontal_flip(sample)
    depth, normals, labels = flipped["depth"].numpy(), flipped["normals"].permute(1, 2, 0).numpy(), flipped["semseg"].numpy()
    estimated = normals_from_depth(depth)
    interior = same_surface(scene, labels, normals)
    tilted = interior & (np.abs(normals[:-1, :-1, 0]) > 0.5)  # side walls and box sides
    assert tilted.sum() > 20
    assert (estimated * normals[:-1, :-1]).sum(-1)[interior].min() > 0.999
    # the mirrored scene without the sign change would be wrong on every x-facing surface
    unflipped_x = normals * np.array([-1.0, 1.0, 1.0])
    assert (estimated * unflipped_x[:-1, :-1]).sum(-1)[tilted].max() < -0.99
    assert torch.equal(flipped["image"], sample["image"].flip(-1))


def test_survey_zoom_is_a_centred_window_resized_back_with_depth_divided_by_the_zoom():
    """The survey code's NYUD augmentation: zoom s in {1, 1.2, 1.5} about the centre (its
    warpAffine about (w/2, h/2) with scale s, rotation 0), depth / s. A 60 x 60 depth ramp: the
    output equals the centred 60/s window, nearest-resized, divided by s."""
    rows = torch.arange(60, dtype=torch.float32).view(60, 1).expand(60, 60)
    sample = {"image": torch.rand(3, 60, 60), "depth": 1.0 + rows, "semseg": rows.long() % 7}
    seen = set()
    for seed in range(30):
        out = survey_zoom(sample, torch.Generator().manual_seed(seed))
        depth_scale = float(sample["depth"].mean() / out["depth"].mean())  # a centred window keeps the ramp's mean
        zoom = min((1.0, 1.2, 1.5), key=lambda z: abs(z - depth_scale))
        seen.add(zoom)
        side = round(60 / zoom)
        start = (60 - side) // 2
        window = sample["depth"][start : start + side, start : start + side]
        expected = torch.nn.functional.interpolate(window[None, None], size=(60, 60), mode="nearest")[0, 0] / zoom
        torch.testing.assert_close(out["depth"], expected)
        labels = torch.nn.functional.interpolate(
            sample["semseg"][start : start + side, start : start + side][None, None].float(), size=(60, 60), mode="nearest"
        )
        assert torch.equal(out["semseg"], labels[0, 0].long())
    assert seen == {1.0, 1.2, 1.5}


def test_scale_and_pad_pads_with_unlabelled_and_invalid_pixels():
    sample = {
        "image": torch.rand(3, 40, 40),
        "semseg": torch.zeros(40, 40, dtype=torch.int64),
        "depth": torch.ones(40, 40),
        "normals": torch.tensor([0.0, 0.0, -1.0]).view(3, 1, 1).expand(3, 40, 40).clone(),
        "edge": torch.zeros(40, 40),
    }
    for seed in range(12):
        out = scale_and_pad(sample, torch.Generator().manual_seed(seed))
        assert all(v.shape[-2:] == (40, 40) for v in out.values())
        padded = out["depth"] == 0
        assert torch.equal(padded, out["semseg"] == -1) and torch.equal(padded, out["normals"].abs().sum(0) == 0)
        assert set(out["semseg"].unique().tolist()) <= {-1, 0}
        depth = out["depth"][~padded]  # the unit depth seen at scale s: 1 / s, s in [0.75, 1.25]
        assert torch.allclose(depth, depth[0].expand_as(depth)) and 1 / 1.25 - 1e-6 <= float(depth[0]) <= 1 / 0.75 + 1e-6


def test_mtan_scale_crop_divides_depth_by_the_zoom():
    sample = {
        "image": torch.rand(3, 60, 60),
        "depth": torch.full((60, 60), 3.0),
        "semseg": torch.zeros(60, 60, dtype=torch.int64),
    }
    seen = set()
    for seed in range(20):
        out = mtan_scale_crop(sample, torch.Generator().manual_seed(seed))
        scale = 3.0 / float(out["depth"][0, 0])
        assert any(abs(scale - s) < 1e-5 for s in (1.0, 1.2, 1.5))
        seen.add(round(scale, 1))
        assert out["image"].shape == (3, 60, 60) and out["semseg"].dtype == torch.int64
    assert seen == {1.0, 1.2, 1.5}


@pytest.mark.parametrize("layout", ["mtan", "nyud_mt"])
def test_both_layouts_read_into_one_convention(layout, tmp_path):
    tasks = ["semseg", "depth", "normals"] + (["edge"] if layout == "nyud_mt" else [])
    dm = SyntheticNYUDv2DataModule(
        str(tmp_path / "twin"),
        layout=layout,
        synthetic={"n_train": 3, "n_val": 2, "size": list(SIZE)},
        tasks=tasks,
        augment="mtan",
        batch_size=2,
    )
    dm.setup("fit")
    assert dm.split_sizes() == {"train": 3, "val": 0, "test": 2} and not dm.has_validation
    assert [t.channels for t in dm.tasks] == [13 if layout == "mtan" else 40, 1, 3] + ([1] if layout == "nyud_mt" else [])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, *SIZE) and float(batch["image"].min()) >= 0 and float(batch["image"].max()) <= 1
    assert batch["semseg"].dtype == torch.int64 and int(batch["semseg"].min()) >= -1
    assert int(batch["semseg"].max()) < dm.tasks[0].num_outputs
    valid = batch["depth"] > 0
    assert torch.allclose(batch["normals"].norm(dim=1)[valid], torch.ones(()), atol=1e-3)
    # the files hold what the twin rendered: the test split's first scene, read back exactly
    test_sample = dm.datasets["test"][0]
    rng = np.random.default_rng(0)
    for _ in range(3):
        render_scene(rng, *SIZE, layout)  # the training scenes come first
    expected = render_scene(rng, *SIZE, layout)
    assert np.array_equal(test_sample["semseg"].numpy(), expected["semseg"])
    assert np.allclose(test_sample["depth"].numpy(), expected["depth"], atol=1e-6)
    assert np.allclose(test_sample["normals"].numpy(), expected["normals"].transpose(2, 0, 1), atol=1e-6)


def test_layout_is_detected_and_an_absent_one_is_one_sentence(tmp_path):
    write_synthetic_nyudv2(tmp_path / "mt", layout="nyud_mt", n_train=1, n_val=1, size=(16, 16))
    assert NYUDv2DataModule(str(tmp_path / "mt")).layout == "nyud_mt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="No NYUDv2 layout found under .*empty"):
        NYUDv2DataModule(str(tmp_path / "empty")).prepare_data()
    with pytest.raises(DatasetError, match="has no \\['edge'\\] annotations"):
        write_synthetic_nyudv2(tmp_path / "m", layout="mtan", n_train=1, n_val=1, size=(16, 16))
        NYUDv2DataModule(str(tmp_path / "m"), tasks=["semseg", "edge"]).setup("fit")


def _edit_npy(path, change) -> None:
    """Load an array, change it in place, save it back."""
    array = np.load(path)
    change(array)
    np.save(path, array)


def _spoil_mtan(root, what):
    train = root / "train"
    if what == "missing depth":
        (train / "depth" / "0.npy").unlink()
        return "0.npy"
    if what == "label out of range":
        _edit_npy(train / "label" / "0.npy", lambda label: label.__setitem__((0, 0), 13))
        return "outside -1..12"
    if what == "depth of another size":
        np.save(train / "depth" / "0.npy", np.ones((8, 8, 1), dtype=np.float32))
        return "its image"
    if what == "truncated normals":
        path = train / "normal" / "0.npy"
        path.write_bytes(path.read_bytes()[:100])
        return "truncated or not a .npy"
    if what == "NaN depth":
        _edit_npy(train / "depth" / "0.npy", lambda depth: depth.__setitem__((2, 2), np.nan))
        return "finite"
    if what == "normalised image":
        _edit_npy(train / "image" / "0.npy", lambda image: image.__isub__(0.5))
        return "normalised already"
    if what == "missing image":
        (train / "image" / "1.npy").unlink()
        return "image missing: .*1.npy"
    if what == "normals outside [-1, 1]":
        _edit_npy(train / "normal" / "0.npy", lambda normals: normals.__setitem__((1, 1), 3.0))
        return "within \\[-1, 1\\]"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what",
    [
        "missing depth",
        "missing image",
        "label out of range",
        "depth of another size",
        "truncated normals",
        "NaN depth",
        "normals outside [-1, 1]",
        "normalised image",
    ],
)
def test_malformed_mtan_files_are_named(what, tmp_path):
    import shutil

    source = write_synthetic_nyudv2(tmp_path / "source", layout="mtan", n_train=2, n_val=1, size=(16, 16))
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    message = _spoil_mtan(root, what)
    dm = NYUDv2DataModule(str(root), augment="none")
    with pytest.raises(DatasetError, match=message) as error:
        dm.setup("fit")
        for i in range(len(dm.datasets["train"])):
            dm.datasets["train"][i]
    assert str(root / "train") in str(error.value)


def test_nyud_mt_listing_errors_are_named(tmp_path):
    import shutil

    source = write_synthetic_nyudv2(tmp_path / "source", layout="nyud_mt", n_train=2, n_val=1, size=(16, 16))
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    listing = root / "gt_sets" / "train.txt"
    listing.write_text(listing.read_text() + "train_0000\n")
    with pytest.raises(DatasetError, match="more than once"):
        NYUDv2DataModule(str(root), tasks=["semseg", "edge"]).setup("fit")
    listing.write_text("\ufefftrain_0000\ntrain_0001\n", encoding="utf-8")  # a BOM (Windows editors): the same ids
    dm = NYUDv2DataModule(str(root), tasks=["semseg", "edge"])
    dm.setup("fit")
    assert dm.split_sizes()["train"] == 2
    listing.write_text("train_0000\nnot_there\n")
    with pytest.raises(DatasetError, match="missing: .*not_there.jpg"):
        NYUDv2DataModule(str(root), tasks=["semseg", "edge"]).setup("fit")
