"""Every split a run will read is read before the first training step: a bad test file of a dataset
whose samples are decoded only when drawn ends the run before training, naming the file, once per
file content (a marker in the cache skips the pass for unchanged files)."""

from pathlib import Path

import pytest

from medmtl.data.emotic_synthetic import SyntheticEmoticDataModule
from medmtl.data.errors import DatasetError
from medmtl.data.nyudv2_synthetic import SyntheticNYUDv2DataModule
from medmtl.data.preflight import check_every_sample
from medmtl.run import check_data_before_training


def nyudv2(layout: str):
    def make(root: Path, cache: Path):
        return SyntheticNYUDv2DataModule(
            str(root), layout=layout, synthetic={"n_train": 3, "n_val": 2, "size": [32, 40]}, tasks=["semseg", "depth"]
        )

    return make


def emotic(root: Path, cache: Path):
    return SyntheticEmoticDataModule(
        str(root),
        synthetic={"n_train": 6, "n_val": 2, "n_test": 2, "size": [96, 128]},
        cache_dir=str(cache),
        context_size=32,
        body_size=16,
    )


#: dataset -> (its datamodule, which of a test sample's files to break: a suffix)
LAZY_DATASETS = {
    "NYUDv2, MTAN layout, a label array": (nyudv2("mtan"), "label/1.npy"),
    "NYUDv2, MTAN layout, an image array": (nyudv2("mtan"), "image/0.npy"),
    "NYUDv2, multi-task layout, a JPEG": (nyudv2("nyud_mt"), ".jpg"),
    "NYUDv2, multi-task layout, a label PNG": (nyudv2("nyud_mt"), ".png"),
    "EMOTIC, official layout, a JPEG": (emotic, ".jpg"),
}


@pytest.mark.parametrize("case", LAZY_DATASETS)
def test_a_truncated_test_file_is_refused_before_training_and_checked_once_per_content(case, tmp_path):
    make, suffix = LAZY_DATASETS[case]
    cache = tmp_path / "cache"
    dm = make(tmp_path / "data", cache)
    check_data_before_training(dm, test=True, cache_dir=str(cache))  # intact: passes, and records it
    assert check_every_sample(dm, ["train", "val", "test"], cache, {}) == []  # unchanged files: not read again

    _, files = dm.lazily_read("test")
    broken = next(f for f in files if str(f).endswith(suffix))
    broken.write_bytes(broken.read_bytes()[: max(8, broken.stat().st_size // 3)])

    fresh = make(tmp_path / "data", cache)  # a new run on the same folder
    check_data_before_training(fresh, test=False, cache_dir=str(cache))  # a run that does not test never reads it
    with pytest.raises(DatasetError, match=broken.name):
        check_data_before_training(fresh, test=True, cache_dir=str(cache))


@pytest.mark.parametrize("case", LAZY_DATASETS)
def test_every_split_of_a_lazily_read_dataset_is_declared_with_the_files_it_reads(case, tmp_path):
    make, _ = LAZY_DATASETS[case]
    dm = make(tmp_path / "data", tmp_path / "cache")
    dm.setup("fit")
    for split in ("train", "test"):
        dataset, files = dm.lazily_read(split)
        assert len(dataset) > 0 and files and all(Path(f).is_file() for f in files)


def test_datasets_read_whole_at_setup_declare_nothing_to_read_again(tmp_path):
    """MedMNIST and MultiMNIST check whole arrays when they load (REFUGE and IDRiD build their caches
    from every file): no second pass."""
    from medmtl.data.medmnist_synthetic import SyntheticMedMNISTDataModule
    from medmtl.data.multimnist_synthetic import SyntheticMultiMNISTDataModule

    for dm in (
        SyntheticMedMNISTDataModule(
            str(tmp_path / "medmnist"), ["breastmnist"], synthetic={"n_train": 4, "n_val": 2, "n_test": 2}
        ),
        SyntheticMultiMNISTDataModule(str(tmp_path / "mnist")),
    ):
        dm.setup("fit")
        assert all(dm.lazily_read(split) is None for split in ("train", "val", "test"))
