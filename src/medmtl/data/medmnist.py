"""MedMNIST (v2/v3) as a multi-task problem: each dataset (``flag``) is one task (Schafer et al. 2024).

Files: ``<root>/<flag>.npz`` (28 px) or ``<root>/<flag>_<size>.npz`` (64, 128, 224), with the
official keys ``{train,val,test}_{images,labels}``; images uint8 (N, H, W) grey or (N, H, W, 3)
colour, 3D volumes (N, D, H, W); labels uint8 (N, L). Nothing is downloaded: a missing file is
named with the place to put it and the official address to get it from. The MD5 of each file is
checked against the MedMNIST ``INFO`` metadata (a copy ships with the package) once per process.

Tasks (:func:`medmnist_task`): ``binary-class`` -> one logit, BCE; ``multi-class`` -> C logits,
cross-entropy; ``multi-label, binary-class`` (ChestMNIST) -> 14 logits, BCE per label. With
``loss_normalization`` (Schafer et al. 2024, so that "the observed value for random inputs for
reinitialized weights was close to one"): cross-entropy / log C, and BCE x log2(e) (= BCE / log 2,
the same rule with C = 2);
``ordinal-regression`` (RetinaMNIST) -> C logits, cross-entropy, scored as multi-class as MedMNIST
v2 does (its ordinal structure is not used: a config could add an ordinal loss later).

Samples are dicts ``{"image": (3, H, W) or (D, 3, H, W) float in [0, 1] (Schafer et al. 2024;
``input_range: symmetric`` gives [-1, 1]), <flag>: label, "dataset": task index}``; training samples
get the weak augmentation without flips of :mod:`medmtl.data.weak_augmentation` (``augment``).
Grey images are repeated to three channels so that one encoder reads every dataset
(``grey_channels: 1`` keeps them one channel, as Yang et al. 2023's 28-pixel baselines read them); a 3D volume
(A, B, C) becomes its C slices through the last axis (Schafer et al. 2024), (C, 3, A, B), or, with
``volume_layout: volume``, stays a volume of ``grey_channels`` channels, (1, A, B, C) or (3, A, B, C),
for a 3D network (Yang et al. 2023's 3D baselines read (1, A, B, C) in [0, 1]). A batch
holds one dataset only, so the other tasks' targets are absent and
their losses are ``None`` (see :mod:`medmtl.tasks`). Training: every task has its own endless
loader (``task_dataloader``), which gradient accumulation (``optim=ga``) draws from. Strategies
that need one forward pass over a batch labelled for every task apply with ``joint_batches``
when every task is 2D at one size: each step then concatenates one batch of every task, the other
tasks' labels zero-filled and masked out by ``present/<task>`` (joint training); otherwise they
are refused in one sentence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import zipfile
from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from medmtl import losses
from medmtl.data.contract import MultiTaskDataModule
from medmtl.data.errors import DatasetError
from medmtl.data.sampling import EpochSeededSampler, SampleKey, evaluation_sampler, split_key
from medmtl.data.weak_augmentation import WeakAugmentation
from medmtl.errors import ConfigError
from medmtl.tasks import Task

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
#: Schafer et al. 2024's selection: the 18 datasets minus OrganA/C/S, RetinaMNIST, TissueMNIST, FractureMNIST3D
SCHAFER_2024_FLAGS = (
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "breastmnist",
    "bloodmnist",
    "organmnist3d",
    "nodulemnist3d",
    "adrenalmnist3d",
    "vesselmnist3d",
    "synapsemnist3d",
)


@lru_cache(maxsize=1)
def medmnist_info() -> dict[str, dict]:
    """The MedMNIST ``INFO`` metadata: task type, channels, labels, sizes, URLs and MD5 per flag."""
    return json.loads((Path(__file__).with_name("medmnist_info.json")).read_text())["INFO"]


def flag_info(flag: str) -> dict:
    info = medmnist_info()
    if flag not in info:
        raise DatasetError(f"Unknown MedMNIST dataset {flag!r}; the flags are: {', '.join(info)}.")
    return info[flag]


def is_3d(flag: str) -> bool:
    return flag.endswith("3d")


def file_name(flag: str, size: int) -> str:
    if size not in SIZES:
        raise DatasetError(f"MedMNIST size must be one of {SIZES}, got {size}.")
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def expected_md5(flag: str, size: int) -> str | None:
    return flag_info(flag).get("MD5" if size == 28 else f"MD5_{size}")


def locate(root: str | Path, flag: str, size: int) -> Path:
    """The file of ``flag`` at ``size``, or a one-sentence error saying where to put which file."""
    path = Path(root) / file_name(flag, size)
    if not path.is_file():
        url = flag_info(flag).get("url" if size == 28 else f"url_{size}", "the MedMNIST Zenodo record")
        raise DatasetError(
            f"MedMNIST file not found: {path}. Nothing is downloaded here; put {file_name(flag, size)} "
            f"(from {url}) in {Path(root)}, or set data.root to the folder that holds it."
        )
    return path


_VERIFIED: set[tuple[str, float, int]] = set()


def verify_md5(path: Path, expected: str | None) -> None:
    """Raise when the file's MD5 differs from the official one (checked once per file and process)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if expected is None or key in _VERIFIED:
        return
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise DatasetError(
            f"{path} is not the official MedMNIST file (MD5 {digest.hexdigest()}, expected {expected}); "
            "download it again, or set data.verify_md5=false for a file you made yourself."
        )
    _VERIFIED.add(key)


INPUT_RANGES = ("unit", "symmetric")
VOLUME_LAYOUTS = ("slices", "volume")


def medmnist_task(flag: str, loss_normalization: bool = True) -> Task:
    """One task per dataset, its head and loss chosen by the dataset's task type; with
    ``loss_normalization`` the loss is divided by its value at chance, log C (log 2 for BCE)."""
    info = flag_info(flag)
    kind_of = {
        "binary-class": "binary",
        "multi-class": "multiclass",
        "ordinal-regression": "multiclass",
        "multi-label, binary-class": "multilabel",
    }
    kind = kind_of[info["task"]]
    n_labels = len(info["label"])
    loss = {"binary": losses.binary_cross_entropy, "multiclass": losses.cross_entropy, "multilabel": losses.multilabel_bce}[kind]
    if loss_normalization:
        chance = math.log(n_labels) if kind == "multiclass" else math.log(2.0)
        loss = partial(losses.scaled, loss=loss, factor=1.0 / chance)
    return Task(
        flag,
        kind,
        loss,
        num_outputs=1 if kind == "binary" else n_labels,
        metadata={"task_type": info["task"], "is_3d": is_3d(flag), "n_channels": info["n_channels"]},
    )


def check_values(path: Path, split: str, flag: str, size: int, images: np.ndarray, labels: np.ndarray) -> None:
    """The values of one split, not only the file: images of 8-bit integers (a float array would be
    divided by 255 a second time) in the official shape of ``flag`` at ``size`` -- (N, size, size)
    grey, (N, size, size, 3) colour, (N, size, size, size) volumes --, and labels that are finite
    whole numbers, one row of the dataset's label count per image. One sentence naming the file,
    the split and, for a label, the sample."""
    info = flag_info(flag)
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: {split} images are {images.dtype}, not uint8 (0-255) as MedMNIST's; convert them to bytes.")
    expected = (size,) * 3 if is_3d(flag) else (size, size) if info["n_channels"] == 1 else (size, size, 3)
    if images.shape[1:] != expected:
        shape = images.shape[1:]
        raise DatasetError(f"{path}: {split} images have shape {shape} per sample, {flag} at {size} px has {expected}.")
    width = len(info["label"]) if info["task"].startswith("multi-label") else 1
    if labels.ndim != 2 or labels.shape[1] != width:
        raise DatasetError(f"{path}: {split} labels have shape {labels.shape}, expected (N, {width}) for {flag}.")
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DatasetError(f"{path}: {split} label of sample {row} is {labels[row].tolist()}, not a whole class number.")


def load_split(path: Path, split: str, flag: str | None = None, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One split's images and labels, checked: a readable npz with the official keys, one label
    row per image, and (given ``flag``) labels within the dataset's classes; given ``size`` too,
    the values and shapes of :func:`check_values`."""
    try:
        with np.load(path) as data:
            missing = [k for k in (f"{split}_images", f"{split}_labels") if k not in data.files]
            if missing:
                raise DatasetError(f"{path} lacks {', '.join(missing)}: not a MedMNIST file.")
            images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetError(f"Cannot read {path}: it is truncated or not a MedMNIST .npz file ({error}).") from None
    if len(images) != len(labels):
        raise DatasetError(f"{path}: {len(images)} {split} images but {len(labels)} labels.")
    if flag is not None and size is not None:
        check_values(path, split, flag, size, images, labels)
    if flag is not None and labels.size:
        info = flag_info(flag)
        n_classes = 2 if info["task"].startswith("multi-label") else len(info["label"])
        if labels.min() < 0 or labels.max() >= n_classes:
            row = int(np.argwhere((labels < 0) | (labels >= n_classes))[0][0])
            raise DatasetError(
                f"{path}: {split} label of sample {row} is {labels[row].tolist()}, outside 0-{n_classes - 1} "
                f"({flag} has {len(info['label'])} labels)."
            )
    return images, labels


def check_grey_channels(grey_channels: int, tasks: Sequence[Task], joint_batches: bool, volume_layout: str = "slices") -> int:
    """``grey_channels`` if it can serve ``tasks``: 3, or 1 for 2D datasets whose joint batches
    (if any) hold no colour dataset beside a grey one, and for volumes read whole."""
    if grey_channels not in (1, 3):
        raise ConfigError(f"data.grey_channels must be 1 or 3, got {grey_channels!r}.")
    if grey_channels == 3:
        return 3
    volumetric = [t.name for t in tasks if t.metadata["is_3d"]]
    if volumetric and volume_layout == "slices":
        raise ConfigError(
            f"data.grey_channels=1 with data.volume_layout=slices is for 2D datasets; {', '.join(volumetric)} "
            "are 3D (their slices are read as RGB). data.volume_layout=volume reads them as one-channel volumes."
        )
    colour = {t.name for t in tasks if t.metadata["n_channels"] == 3}
    if joint_batches and colour and len(colour) < len(tasks):
        raise ConfigError(
            f"data.grey_channels=1 with joint batches would concatenate one-channel grey images with the colour "
            f"images of {', '.join(sorted(colour))}; use data.grey_channels=3."
        )
    return 1


class MedMNISTDataset(Dataset):
    """One split of one dataset; see the module docstring for the sample."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        task: Task,
        task_index: int,
        augmentation: WeakAugmentation | None = None,
        input_range: str = "unit",
        grey_channels: int = 3,
        volume_layout: str = "slices",
    ):
        if len(images) != len(labels):
            raise DatasetError(f"{task.name}: {len(images)} images but {len(labels)} labels.")
        self.images, self.labels, self.task, self.task_index = images, labels, task, task_index
        self.augmentation, self.input_range, self.grey_channels = augmentation, input_range, grey_channels
        self.volumetric = bool(task.metadata.get("is_3d"))
        self.volume_layout = volume_layout

    def __len__(self) -> int:
        return len(self.images)

    def _image(self, index: int) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(self.images[index])).float().div_(255.0)
        if self.volumetric and self.volume_layout == "volume":  # (A, B, C) -> (grey_channels, A, B, C)
            return x.unsqueeze(0).expand(self.grey_channels, -1, -1, -1).contiguous()
        if self.volumetric:  # (A, B, C) -> (C, 3, A, B): slices through the last axis, each a grey image
            return x.permute(2, 0, 1).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        if x.dim() == 2:  # grey (H, W) -> (3, H, W), or (1, H, W) with grey_channels=1
            return x.unsqueeze(0).expand(self.grey_channels, -1, -1).contiguous()
        return x.permute(2, 0, 1).contiguous()  # colour (H, W, 3)

    def _label(self, index: int) -> torch.Tensor:
        label = torch.from_numpy(np.asarray(self.labels[index]).astype(np.int64))
        if self.task.kind == "multilabel":
            return label.float()
        if self.task.kind == "binary":
            return label.reshape(()).float()
        return label.reshape(())

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        index, seed = split_key(key)
        image = self._image(index)
        if self.augmentation is not None and seed is not None:
            image = self.augmentation(image, seed)
        if self.input_range == "symmetric":
            image = image * 2.0 - 1.0
        return {"image": image, self.task.name: self._label(index), "dataset": torch.tensor(self.task_index)}


class _Steps(Dataset):
    """The epoch of a multi-dataset run: ``n`` optimisation steps, each drawing its own batches."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"step": torch.tensor(index)}


def _endless(factory):
    while True:
        yield from factory()


def join_batches(batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch from per-task batches: images concatenated; each task's labels at its own rows,
    zeros elsewhere, and ``present/<task>`` marking its rows."""
    sizes = {task: len(batch["image"]) for task, batch in batches.items()}
    total = sum(sizes.values())
    joined = {
        "image": torch.cat([b["image"] for b in batches.values()]),
        "dataset": torch.cat([b["dataset"] for b in batches.values()]),
    }
    start = 0
    for task, batch in batches.items():
        labels = batch[task]
        full = torch.zeros((total, *labels.shape[1:]), dtype=labels.dtype)
        full[start : start + sizes[task]] = labels
        present = torch.zeros(total, dtype=torch.bool)
        present[start : start + sizes[task]] = True
        joined[task], joined[f"present/{task}"] = full, present
        start += sizes[task]
    return joined


def _joint_batch_of_one_task(flag: str, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return join_batches({flag: default_collate(samples)})


class JointBatchLoader:
    """``steps`` joint batches per epoch, each made of one batch of every task (:func:`join_batches`)."""

    def __init__(self, datamodule: MedMNISTDataModule, steps: int):
        self.datamodule, self.steps = datamodule, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        streams = {flag: _endless(lambda flag=flag: self.datamodule.task_dataloader(flag)) for flag in self.datamodule.flags}
        for _ in range(self.steps):
            yield join_batches({flag: next(stream) for flag, stream in streams.items()})


class MedMNISTDataModule(MultiTaskDataModule):
    """Several MedMNIST datasets, one task each.

    Args:
        root: folder holding the ``.npz`` files.
        flags: the datasets (tasks), e.g. ``[breastmnist, pneumoniamnist]``.
        size: image side of the files to read (28, 64, 128 or 224).
        batch_size: per task and step (Schafer et al. 2024: the same for every task).
        batch_size_3d: per step of a 3D task, whose volume of D slices costs the encoder D images
            (an AdrenalMNIST3D volume at 28 px: 28); default ``batch_size``.
        steps_per_epoch: optimisation steps per epoch; default: the batches of the largest
            training set (every dataset is seen at least once per epoch). One dataset with joint
            batches and no ``steps_per_epoch``: an epoch is one shuffled pass over its training
            set, the last batch partial, as in a plain training loop.
        verify_md5: check each file against the official MD5.
        max_samples: keep at most this many samples per split (quick runs); None keeps all.
        seed: fixes each task's shuffling (per epoch, :class:`EpochSeededSampler`).
        augment: the weak augmentation without flips on the training splits (Schafer et al. 2024).
        loss_normalization: each loss divided by its value at chance (Schafer et al. 2024).
        input_range: ``unit`` ([0, 1], Schafer et al. 2024) or ``symmetric`` ([-1, 1]).
        grey_channels: 3 (grey images repeated to RGB, so one encoder reads every dataset) or 1
            (kept one channel: Yang et al. 2023's 28-pixel baselines; 2D datasets only, and joint
            batches only when no colour dataset joins them).
        pin_memory: page-locked batches (faster, asynchronous copies to a GPU).
        joint_batches: train on joint batches (one batch of every task per step, concatenated),
            so that every strategy applies; needs all tasks 2D at one size, or all 3D read as
            volumes. Default: per-task batches, drawn by the strategy (``optim=ga``).
        volume_layout: how a 3D dataset is read: ``slices`` (its C slices through the last axis,
            each a grey RGB image, (C, 3, A, B): Schafer et al. 2024) or ``volume`` (one volume of
            ``grey_channels`` channels, (1 or 3, A, B, C), for a 3D network such as
            ``model.dims=3``: Yang et al. 2023's 3D baselines).
    """

    def __init__(
        self,
        root: str,
        flags: Sequence[str],
        size: int = 28,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        steps_per_epoch: int | None = None,
        batch_size_3d: int | None = None,
        verify_md5: bool = True,
        max_samples: int | None = None,
        seed: int = 0,
        joint_batches: bool = False,
        augment: bool = False,
        loss_normalization: bool = True,
        input_range: str = "unit",
        grey_channels: int = 3,
        pin_memory: bool = False,
        volume_layout: str = "slices",
    ):
        super().__init__()
        if volume_layout not in VOLUME_LAYOUTS:
            raise ConfigError(f"data.volume_layout must be one of {VOLUME_LAYOUTS}, got {volume_layout!r}.")
        self.volume_layout = volume_layout
        if input_range not in INPUT_RANGES:
            raise ConfigError(f"data.input_range must be one of {INPUT_RANGES}, got {input_range!r}.")
        self.augmentation = WeakAugmentation() if augment else None
        self.input_range = input_range
        if not flags:
            raise DatasetError("MedMNIST needs at least one dataset in data.flags.")
        self.root, self.flags, self.size = Path(root), list(flags), size
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.batch_size_3d = batch_size if batch_size_3d is None else batch_size_3d
        self.pin_memory = pin_memory
        self.steps_per_epoch, self.verify, self.max_samples, self.seed = steps_per_epoch, verify_md5, max_samples, seed
        self.tasks = [medmnist_task(flag, loss_normalization) for flag in self.flags]
        self.datasets: dict[str, dict[str, MedMNISTDataset]] = {}
        self.joint_batches = joint_batches
        volumetric = [t.name for t in self.tasks if t.metadata["is_3d"]]
        all_volumes = volume_layout == "volume" and len(volumetric) == len(self.tasks)
        if joint_batches and volumetric and not all_volumes:
            raise DatasetError(
                f"data.joint_batches needs every task 2D at one size, or every task 3D with "
                f"data.volume_layout=volume, but {', '.join(volumetric)} are 3D; train this task set with "
                "optim=ga (per-task batches) instead."
            )
        if augment and volume_layout == "volume" and volumetric:
            raise ConfigError(
                f"data.augment is a 2D augmentation; {', '.join(volumetric)} are read as volumes "
                "(data.volume_layout=volume): use data.augment=false."
            )
        self.grey_channels = check_grey_channels(grey_channels, self.tasks, joint_batches, volume_layout)
        #: True when each task has its own dataset and input (one forward pass cannot serve every task)
        self.separate_task_inputs = not joint_batches

    def prepare_data(self) -> None:
        for flag in self.flags:
            path = locate(self.root, flag, self.size)
            if self.verify:
                verify_md5(path, expected_md5(flag, self.size))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()
        for index, (flag, task) in enumerate(zip(self.flags, self.tasks)):
            path = locate(self.root, flag, self.size)
            self.datasets[flag] = {}
            for split in SPLITS:
                images, labels = load_split(path, split, flag, self.size)
                if self.max_samples is not None:
                    images, labels = images[: self.max_samples], labels[: self.max_samples]
                augmentation = self.augmentation if split == "train" else None
                self.datasets[flag][split] = MedMNISTDataset(
                    images, labels, task, index, augmentation, self.input_range, self.grey_channels, self.volume_layout
                )
        log.info(
            "MedMNIST %s px: %s", self.size, {f: {s: len(d) for s, d in splits.items()} for f, splits in self.datasets.items()}
        )

    def split_sizes(self) -> dict[str, int]:
        """Samples per split, summed over the datasets."""
        return {split: sum(len(d[split]) for d in self.datasets.values()) for split in SPLITS}

    def task_batch_size(self, task: str) -> int:
        """Samples per training step of ``task`` (``batch_size_3d`` for a 3D task)."""
        return self.batch_size_3d if self.tasks[self.flags.index(task)].metadata["is_3d"] else self.batch_size

    def task_dataloader(self, task: str) -> DataLoader:
        """One shuffled pass over ``task``'s training set (GA restarts it when it ends)."""
        dataset = self.datasets[task]["train"]
        batch_size = self.task_batch_size(task)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            sampler=EpochSeededSampler(len(dataset), self.seed + self.flags.index(task)),
            drop_last=len(dataset) > batch_size,
        )

    def train_dataloader(self) -> DataLoader | JointBatchLoader:
        if self.joint_batches and len(self.flags) == 1 and self.steps_per_epoch is None:
            return self.single_task_pass()
        steps = self.steps_per_epoch or max(
            math.ceil(len(self.datasets[f]["train"]) / self.task_batch_size(f)) for f in self.flags
        )
        if self.joint_batches:
            return JointBatchLoader(self, steps)
        return DataLoader(_Steps(steps), batch_size=1)

    def single_task_pass(self) -> DataLoader:
        """One task's epoch as a plain training loop has it (Yang et al. 2023): one shuffled pass
        over its training set, the last batch partial, in the joint-batch format."""
        (flag,) = self.flags
        return DataLoader(
            self.datasets[flag]["train"],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            sampler=EpochSeededSampler(len(self.datasets[flag]["train"]), self.seed),
            collate_fn=partial(_joint_batch_of_one_task, flag),
        )

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        return [
            DataLoader(
                self.datasets[flag][split],
                batch_size=self.eval_batch_size,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                sampler=evaluation_sampler(len(self.datasets[flag][split])),
            )
            for flag in self.flags
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def make_evaluator(self):
        from medmtl.metrics.medmnist import MedMNISTEvaluator

        return MedMNISTEvaluator(self.tasks)
