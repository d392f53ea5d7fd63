"""EMOTIC: the official .mat read as the release structures it (one annotator in training, several
combined in validation and test), the preprocessed arrays, the synthetic twin's labels checked
against its pixels, flips of both inputs together, the conversion cached once and redone when the
file changes, and every malformed entry named in one sentence."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from medmtl.data.emotic import EmoticDataModule, emotic_tasks
from medmtl.data.emotic_layout import CATEGORIES, DatasetError
from medmtl.data.emotic_synthetic import BODY_COLOURS, SyntheticEmoticDataModule, _cell, _struct_array

SIZE = (40, 60)  # height, width of the hand-made images


def person(box, categories, dims, annotators=None, combined=True):
    """One person as the release stores it; ``annotators``: several (categories, dims) for val/test."""
    if annotators is None:
        return {
            "body_bbox": np.array([box], dtype=float),
            "annotations_categories": {"categories": _cell(categories)},
            "annotations_continuous": dict(zip(("valence", "arousal", "dominance"), dims)),
        }
    entry = {
        "body_bbox": np.array([box], dtype=float),
        "annotations_categories": _struct_array([{"categories": _cell(c)} for c, _ in annotators]),
        "annotations_continuous": _struct_array([dict(zip(("valence", "arousal", "dominance"), d)) for _, d in annotators]),
    }
    if combined:
        entry |= {
            "combined_categories": _cell(categories),
            "combined_continuous": dict(zip(("valence", "arousal", "dominance"), dims)),
        }
    return entry


def write_release(root, persons_by_split, image_size=SIZE):
    structs = {}
    for split, persons in persons_by_split.items():
        entries = []
        for i, people in enumerate(persons):
            name = f"{split}{i}.jpg"
            path = root / "emotic" / "mscoco" / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            ramp = np.linspace(0, 250, image_size[1]).astype(np.uint8)  # left and right differ: flips show
            Image.fromarray(np.repeat(np.tile(ramp, (image_size[0], 1))[..., None], 3, axis=2)).save(path)
            entries.append(
                {
                    "filename": name,
                    "folder": "mscoco/images",
                    "image_size": {"n_col": image_size[1], "n_row": image_size[0]},
                    "person": _struct_array(people),
                }
            )
        structs[split] = _struct_array(entries)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    savemat(root / "Annotations" / "Annotations.mat", structs)
    return root


def default_release():
    return {
        "train": [[person([2, 3, 20, 30], ["Anger", "Peace"], (3, 4, 5)), person([30, 0, 59, 39], ["Yearning"], (10, 1, 2))]],
        "val": [[person([0, 0, 10, 10], ["Fear"], (5, 5, 5), annotators=[(["Fear"], (4, 6, 5)), (["Fear", "Pain"], (6, 4, 5))])]],
        "test": [
            [
                person(
                    [1, 1, 12, 12],
                    ["Pain", "Sadness"],
                    (2, 3, 4),
                    annotators=[(["Pain"], (1, 2, 3)), (["Sadness"], (3, 4, 5))],
                    combined=False,
                )
            ]
        ],
    }


def module(root, tmp_path, **options):
    return EmoticDataModule(str(root), cache_dir=str(tmp_path / "cache"), context_size=32, body_size=16, augment=False, **options)


def test_the_release_structures_read_with_combined_labels_in_validation_and_test(tmp_path):
    root = write_release(tmp_path / "emotic", default_release())
    dm = module(root, tmp_path)
    dm.setup("fit")
    assert dm.split_sizes() == {"train": 2, "val": 1, "test": 1}
    records = {split: dm.datasets[split].source.records for split in ("train", "val", "test")}
    names = lambda row: [CATEGORIES[k] for k in np.flatnonzero(row)]
    assert names(records["train"].categories[0]) == ["Anger", "Peace"] and names(records["train"].categories[1]) == ["Yearning"]
    np.testing.assert_allclose(records["train"].dimensions, [[3, 4, 5], [10, 1, 2]])
    # validation: the combined labels, not an annotator's
    assert names(records["val"].categories[0]) == ["Fear"]
    np.testing.assert_allclose(records["val"].dimensions[0], [5, 5, 5])
    # a copy without combined fields: the union of categories and the mean of the dimensions
    assert names(records["test"].categories[0]) == ["Pain", "Sadness"]
    np.testing.assert_allclose(records["test"].dimensions[0], [2, 3, 4])
    sample = dm.datasets["train"][0]
    assert sample["context"].shape == (3, 32, 32) and sample["body"].shape == (3, 16, 16)
    assert sample["categories"].sum() == 2 and torch.equal(sample["dimensions"], torch.tensor([3.0, 4.0, 5.0]))


def test_the_26_task_setting_gives_one_binary_target_per_category(tmp_path):
    root = write_release(tmp_path / "emotic", default_release())
    dm = module(root, tmp_path, setting="26task")
    dm.setup("fit")
    assert [t.name for t in dm.tasks][:3] == ["affection", "anger", "annoyance"] and len(dm.tasks) == 26
    assert "doubt_confusion" in [t.name for t in dm.tasks] and all(t.kind == "binary" for t in dm.tasks)
    sample = dm.datasets["train"][0]
    assert float(sample["anger"]) == 1 and float(sample["peace"]) == 1 and float(sample["fear"]) == 0
    assert "dimensions" not in sample


def test_flips_mirror_both_inputs_together(tmp_path):
    root = write_release(tmp_path / "emotic", default_release())
    dm = EmoticDataModule(str(root), cache_dir=str(tmp_path / "cache"), context_size=32, body_size=16, augment=True)
    dm.setup("fit")
    plain = dm.datasets["train"][0]
    flips = 0
    for seed in range(16):
        sample = dm.datasets["train"][(0, seed)]
        flipped = not torch.equal(sample["context"], plain["context"])
        assert torch.equal(sample["context"], plain["context"].flip(-1) if flipped else plain["context"])
        assert torch.equal(sample["body"], plain["body"].flip(-1) if flipped else plain["body"])
        flips += flipped
    assert 0 < flips < 16


def test_the_mat_file_is_converted_once_and_again_when_it_changes(tmp_path, monkeypatch):
    import medmtl.data.emotic as emotic

    root = write_release(tmp_path / "emotic", default_release())
    module(root, tmp_path).setup("fit")
    calls = []
    real = emotic.read_mat
    monkeypatch.setattr(emotic, "read_mat", lambda path: calls.append(path) or real(path))
    module(root, tmp_path).setup("fit")
    assert calls == [], "converted again although nothing changed"
    release = default_release()
    release["train"][0][0] = person([2, 3, 20, 30], ["Happiness"], (7, 7, 7))
    write_release(root, release)
    dm = module(root, tmp_path)
    dm.setup("fit")
    assert len(calls) == 1 and dm.datasets["train"].source.records.categories[0][CATEGORIES.index("Happiness")] == 1


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda r: r["train"][0].__setitem__(0, person([70, 0, 90, 10], ["Anger"], (3, 3, 3))), "lies outside its 60x40 image"),
        (lambda r: r["train"][0].__setitem__(0, person([5, 5, 5, 20], ["Anger"], (3, 3, 3))), "or is empty"),
        (lambda r: r["train"][0].__setitem__(0, person([2, 3, 20, 30], ["Angst"], (3, 3, 3))), "unknown category 'Angst'"),
        (lambda r: r["train"][0].__setitem__(0, person([2, 3, 20, 30], [], (3, 3, 3))), "empty category list"),
        (lambda r: r["train"][0].__setitem__(0, person([2, 3, 20, 30], ["Anger"], (3, 11, 3))), "not all within 1-10"),
    ],
)
def test_malformed_persons_are_named(change, message, tmp_path):
    release = default_release()
    change(release)
    root = write_release(tmp_path / "emotic", release)
    with pytest.raises(DatasetError, match=message) as error:
        module(root, tmp_path).setup("fit")
    assert "train image 0 (emotic/mscoco/images/train0.jpg), person 0" in str(error.value)


def test_a_box_overshooting_its_image_is_clipped(tmp_path):
    release = default_release()
    release["train"][0][0] = person([-3, 5, 64, 45], ["Anger"], (3, 3, 3))
    dm = module(write_release(tmp_path / "emotic", release), tmp_path)
    dm.setup("fit")
    np.testing.assert_allclose(dm.datasets["train"].source.records.box[0], [0, 5, 60, 40])


def test_a_missing_image_is_an_error_or_left_out_on_request(tmp_path):
    root = write_release(tmp_path / "emotic", default_release())
    (root / "emotic" / "mscoco" / "images" / "train0.jpg").unlink()
    with pytest.raises(DatasetError, match="EMOTIC image missing: .*train0.jpg .*skip_bad_samples"):
        module(root, tmp_path).setup("fit")
    dm = module(root, tmp_path / "other", skip_bad_samples=True)
    dm.setup("fit")
    assert dm.split_sizes()["train"] == 0 and dm.split_sizes()["val"] == 1


def test_a_truncated_mat_file_and_an_absent_layout_are_one_sentence(tmp_path):
    root = write_release(tmp_path / "emotic", default_release())
    mat = root / "Annotations" / "Annotations.mat"
    mat.write_bytes(mat.read_bytes()[:200])
    with pytest.raises(DatasetError, match="Cannot read .*Annotations.mat"):
        module(root, tmp_path).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="No EMOTIC layout found"):
        module(tmp_path / "empty", tmp_path).prepare_data()


def write_preprocessed(tmp_path):
    folder = tmp_path / "pre" / "emotic_pre"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        header = "Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age\n"
        (folder / f"{split}.csv").write_text(
            header + "".join(f'{i},f,x{i}.jpg,"[1,1]","[0,0,1,1]","[\'Fear\']","[5,5,5]",M,Adult\n' for i in range(n))
        )
        np.save(folder / f"{split}_context_arr.npy", rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8))
        np.save(folder / f"{split}_body_arr.npy", rng.integers(0, 255, (n, 128, 128, 3), dtype=np.uint8))
        cat = np.zeros((n, 26), dtype=np.float32)
        cat[:, CATEGORIES.index("Fear")] = 1
        np.save(folder / f"{split}_cat_arr.npy", cat)
        np.save(folder / f"{split}_cont_arr.npy", np.full((n, 3), 5.0, dtype=np.float32))
    return folder


def test_the_preprocessed_form_reads_its_arrays(tmp_path):
    folder = write_preprocessed(tmp_path)
    dm = EmoticDataModule(str(tmp_path / "pre"), context_size=32, body_size=16, augment=False)
    assert dm.layout == "preprocessed"
    dm.setup("fit")
    assert dm.split_sizes() == {"train": 3, "val": 2, "test": 2}
    sample = dm.datasets["val"][1]
    assert sample["body"].shape == (3, 16, 16) and sample["categories"][CATEGORIES.index("Fear")] == 1
    np.save(folder / "test_cont_arr.npy", np.full((5, 3), 5.0, dtype=np.float32))
    with pytest.raises(DatasetError, match="test_cont_arr.npy has shape \\(5, 3\\); expected 2 axes and 2 rows"):
        EmoticDataModule(str(tmp_path / "pre")).setup("fit")


def spoil(key, change):
    """Rewrite one preprocessed array of the validation split, row 1 (an array for the whole split)."""

    def apply(folder):
        path = folder / f"val_{key}_arr.npy"
        array = np.load(path)
        np.save(path, change(array))

    return apply


def with_row(column_values):
    def change(array):
        array = array.astype(np.float32)
        array[1] = column_values
        return array

    return change


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            spoil("cat", with_row(np.where(np.arange(26) == 3, 2.0, 0.0))),
            r"val_cat_arr.npy row 1 has category values other than 0 and 1",
        ),
        (spoil("cat", with_row(np.zeros(26))), r"val_cat_arr.npy row 1 has no category"),
        (spoil("cat", with_row(np.where(np.arange(26) == 3, 0.5, 0.0))), r"val_cat_arr.npy row 1 has category values other"),
        (spoil("cont", with_row([0.0, 5.0, 5.0])), r"val_cont_arr.npy row 1 has dimensions \[0.0, 5.0, 5.0\]"),
        (spoil("cont", with_row([5.0, 11.0, 5.0])), r"val_cont_arr.npy row 1 has dimensions \[5.0, 11.0, 5.0\]"),
        (spoil("cont", with_row([5.0, np.nan, 5.0])), r"val_cont_arr.npy row 1 has dimensions \[5.0, nan, 5.0\]"),
        (spoil("context", lambda a: a.astype(np.float32) / 255), r"val_context_arr.npy holds float32 crops"),
        (spoil("body", lambda a: a[..., :1]), r"val_body_arr.npy holds uint8 crops of shape \(128, 128, 1\)"),
    ],
    ids=[
        "category_2",
        "no_category",
        "category_fraction",
        "dimension_0",
        "dimension_11",
        "dimension_nan",
        "float_context",
        "grey_body",
    ],
)
def test_preprocessed_values_the_mat_path_refuses_are_refused_naming_file_and_row(corrupt, message, tmp_path):
    corrupt(write_preprocessed(tmp_path))
    with pytest.raises(DatasetError, match=message):
        EmoticDataModule(str(tmp_path / "pre"), context_size=32, body_size=16, augment=False).setup("fit")


def test_synthetic_labels_follow_what_is_drawn(tmp_path):
    """The body colour read from the pixels gives two of the person's categories, the box height its dominance."""
    dm = SyntheticEmoticDataModule(
        str(tmp_path / "twin"),
        synthetic={"n_train": 6, "n_val": 2, "n_test": 2, "size": [96, 128]},
        cache_dir=str(tmp_path / "cache"),
        context_size=32,
        body_size=16,
        augment=False,
    )
    dm.setup("fit")
    source = dm.datasets["train"].source
    records = source.records
    assert len(records) >= 6
    for i in range(len(records)):
        _, body, categories, dimensions = source(i)
        x1, y1, x2, y2 = records.box[i]
        below_head = body[body.shape[0] // 4 :].reshape(-1, 3).astype(float)
        dominant = np.median(below_head, axis=0)  # the body colour covers most of the box; stripes the rest
        colour = int(np.argmin(np.abs(BODY_COLOURS - dominant).sum(1)))
        assert categories[colour] == 1 and categories[colour + 8] == 1, (i, colour)
        assert dimensions[2] == pytest.approx(1 + 9 * (y2 - y1) / 96, abs=2e-3)
    assert emotic_tasks("2task")[1].channels == 3


def test_a_matlab_v73_file_is_named_as_such(tmp_path):
    root = write_release(tmp_path / "emotic", default_release())
    mat = root / "Annotations" / "Annotations.mat"
    mat.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: 2019".ljust(512, b"\0"))
    with pytest.raises(DatasetError, match="MATLAB v7.3 .* -v7 option"):
        module(root, tmp_path).setup("fit")
