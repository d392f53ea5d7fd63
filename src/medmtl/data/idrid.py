"""IDRiD as a partially labelled multi-task problem (Roy 2025): lesion segmentation on one image set,
disease grading on another, one training set made of their union.

Tasks: the grades in ``grades`` (``retinopathy``, 5 grades; ``edema``, 3 risk levels),
cross-entropy + focal loss; one segmentation task per lesion in ``lesions`` (``ma``, ``he``,
``ex``, ``se``, ``od``), focal + Dice loss. Roy 2025's single-task baselines take one family:
``grades=[]`` (the segmenter) or ``lesions=[]`` (the classifier); an image set with no chosen
task is then left out of every split. Every sample carries every target key (zeros where it has
no label) and a ``present/<task>`` flag: grading images have no masks, segmentation images no
grades; its ``index`` is the image's place in the split's scan, the same whatever the tasks. A lesion
mask missing for a segmentation image is either masked out of its loss (``missing_mask: mask``,
the default) or an all-negative target (``missing_mask: negative``, what Roy 2025 did).

Images (4288 x 2848) and masks (1-bit TIFF, read as ``> 0``) are resized once to ``resolution``
(H, W; Roy 2025 used 712 x 1072) into the content-keyed cache under ``cache_dir``
(:mod:`medmtl.data.cache`; rebuilt when an image or mask changes); the build time is logged and
kept in ``cache_seconds``. IDRiD has no validation split: ``val_fraction``
of each training image set is held out with ``split_seed``.

Training augmentation (``augment``; Roy 2025 lists horizontal flip, rotation, rescale, translation,
contrast and blur): the spatial transforms move the image and its masks together. The draws come
from the per-sample seeds of :class:`~medmtl.data.sampling.EpochSeededSampler`, so a resumed run
replays them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medmtl import losses
from medmtl.data.cache import SampleCache, source_key
from medmtl.data.contract import MultiTaskDataModule, SplitLoaders
from medmtl.data.errors import DatasetError
from medmtl.data.idrid_layout import LESIONS, IdridSample, scan_idrid
from medmtl.data.images import check_point_inside, read_binary_mask, read_rgb
from medmtl.data.sampling import SampleKey, split_key
from medmtl.errors import ConfigError
from medmtl.tasks import Task

log = logging.getLogger(__name__)

MISSING_MASK = ("mask", "negative")
GRADES = {"retinopathy": 5, "edema": 3}


def idrid_tasks(
    lesions: Sequence[str] = tuple(LESIONS),
    focal_gamma: float = 2.0,
    grades: Sequence[str] = tuple(GRADES),
    focal_alpha: float | None = None,
    grading_focal: str = "softmax",
) -> list[Task]:
    """Roy 2025's tasks and losses. ``focal_gamma``, ``focal_alpha`` (null: no class weighting;
    0.25 in the authors' code) and ``grading_focal`` (:func:`medmtl.losses.ce_plus_focal`)."""
    if grading_focal not in losses.GRADING_FOCALS:
        raise ConfigError(f"data.grading_focal must be one of {losses.GRADING_FOCALS}, got {grading_focal!r}.")
    unknown = [lesion for lesion in lesions if lesion not in LESIONS] + [g for g in grades if g not in GRADES]
    if unknown:
        raise DatasetError(f"Unknown IDRiD tasks {unknown}; the lesions are {list(LESIONS)}, the grades {list(GRADES)}.")
    if not lesions and not grades:
        raise DatasetError("data.lesions and data.grades are both empty: IDRiD needs at least one task.")
    grading = [
        Task(
            name,
            "multiclass",
            partial(losses.ce_plus_focal, gamma=focal_gamma, alpha=focal_alpha, focal=grading_focal),
            num_outputs=GRADES[name],
        )
        for name in grades
    ]
    segmentation = [
        Task(lesion, "segmentation", partial(losses.focal_plus_dice, gamma=focal_gamma, alpha=focal_alpha)) for lesion in lesions
    ]
    return grading + segmentation


def cache_name(sample: IdridSample, resolution: tuple[int, int]) -> str:
    return f"{resolution[0]}x{resolution[1]}/{sample.split}/{sample.name}"


def build_entry(sample: IdridSample, resolution: tuple[int, int]) -> dict[str, np.ndarray]:
    """The resized image and masks; the image and every mask decoded completely and checked."""
    height, width = resolution
    image = read_rgb(sample.image)
    entry = {
        "image": cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA),
        "original_wh": np.array(image.shape[1::-1], dtype=np.int64),
    }
    for lesion, path in sample.masks.items():
        if path is not None:
            mask = read_binary_mask(path)
            if mask.shape != image.shape[:2]:
                raise DatasetError(f"{path} is {mask.shape[1]}x{mask.shape[0]}, its image {image.shape[1]}x{image.shape[0]}.")
            entry[f"mask_{lesion}"] = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    for name in ("od_xy", "fovea_xy"):
        check_point_inside(getattr(sample, name), image.shape[1], image.shape[0], f"IDRiD localisation {name} of {sample.name}")
    return entry


def build_cache(cache: SampleCache, samples: Sequence[IdridSample], resolution: tuple[int, int]) -> tuple[list[Path], float]:
    """The cache file of every sample (built where missing or out of date) and the seconds it took."""
    entries = [
        (
            cache_name(s, resolution),
            source_key(
                [s.image, *s.masks.values()], resolution=list(resolution), masks=sorted(k for k, v in s.masks.items() if v)
            ),
            lambda s=s: build_entry(s, resolution),
        )
        for s in samples
    ]
    seconds = cache.ensure(entries, "IDRiD images")
    return [cache.path(name, key) for name, key, _ in entries], seconds


def training_augmentation(seed: int) -> A.Compose:
    """Roy 2025's list; the magnitudes are ours (the paper gives none)."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15), p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.2, p=0.5),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
        ],
        seed=seed,
    )


class IdridDataset(Dataset):
    def __init__(
        self,
        samples: Sequence[IdridSample],
        cache_files: Sequence[Path],
        resolution: tuple[int, int],
        lesions: Sequence[str],
        missing_mask: str = "mask",
        grades: Sequence[str] = tuple(GRADES),
        transform: A.Compose | None = None,
    ):
        if missing_mask not in MISSING_MASK:
            raise ConfigError(f"data.missing_mask must be one of {MISSING_MASK}, got {missing_mask!r}.")
        self.samples, self.cache_files, self.resolution = list(samples), list(cache_files), tuple(resolution)
        self.lesions, self.grades, self.missing_mask = list(lesions), list(grades), missing_mask
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        index, augmentation_seed = split_key(key)
        sample = self.samples[index]
        with np.load(self.cache_files[index]) as entry:
            image = entry["image"]
            masks = {lesion: entry[f"mask_{lesion}"] for lesion in self.lesions if f"mask_{lesion}" in entry.files}
        if self.transform is not None:
            if augmentation_seed is not None:
                self.transform.set_random_seed(augmentation_seed)
            out = self.transform(image=image, masks=list(masks.values()))
            image, masks = out["image"], dict(zip(masks, out["masks"]))
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0),
            "index": torch.tensor(sample.position if sample.position >= 0 else index),
        }
        for name in self.grades:
            value = getattr(sample, name)
            item[name] = torch.tensor(value if value is not None else 0)
            item[f"present/{name}"] = torch.tensor(value is not None)
        blank = np.zeros(self.resolution, dtype=np.uint8)
        for lesion in self.lesions:
            has_mask = lesion in masks
            item[lesion] = torch.from_numpy(np.ascontiguousarray(masks.get(lesion, blank))).float()
            labelled = has_mask or (sample.is_segmentation and self.missing_mask == "negative")
            item[f"present/{lesion}"] = torch.tensor(labelled)
        return item


def _hold_out(samples: list[IdridSample], fraction: float, seed: int) -> tuple[list[IdridSample], list[IdridSample]]:
    """Split each image set (segmentation, grading) into train / validation with ``fraction`` held out."""
    train, val = [], []
    for group in ([s for s in samples if s.is_segmentation], [s for s in samples if not s.is_segmentation]):
        order = np.random.default_rng(seed).permutation(len(group))
        n_val = int(round(fraction * len(group)))
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


class IdridDataModule(SplitLoaders, MultiTaskDataModule):
    """Args: root; resolution (H, W); lesions (segmentation tasks); grades (grading tasks);
    missing_mask (``mask`` | ``negative``); val_fraction and split_seed (validation held out of
    the training sets); batch sizes, workers, pin_memory; seed (training order and augmentation draws);
    augment (training augmentation); focal_gamma, focal_alpha, grading_focal (:func:`idrid_tasks`);
    cache_dir (``paths.cache_dir``); skip_bad_samples (leave out, and log, grading rows whose image
    is absent instead of stopping)."""

    #: every training image in every epoch (the segmentation set is small: 54 images in Roy 2025's split)
    drop_incomplete_batch = False

    def __init__(
        self,
        root: str,
        resolution: Sequence[int] = (712, 1072),
        lesions: Sequence[str] = tuple(LESIONS),
        missing_mask: str = "mask",
        val_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 4,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        focal_gamma: float = 2.0,
        grades: Sequence[str] = tuple(GRADES),
        augment: bool = True,
        cache_dir: str | None = None,
        skip_bad_samples: bool = False,
        focal_alpha: float | None = None,
        grading_focal: str = "softmax",
        pin_memory: bool = False,
    ):
        super().__init__()
        if missing_mask not in MISSING_MASK:
            raise ConfigError(f"data.missing_mask must be one of {MISSING_MASK}, got {missing_mask!r}.")
        self.root, self.resolution = Path(root), (int(resolution[0]), int(resolution[1]))
        self.lesions, self.grades, self.missing_mask = list(lesions), list(grades), missing_mask
        self.augment, self.skip_bad_samples = augment, skip_bad_samples
        self.cache = SampleCache(cache_dir, "idrid", self.root)
        self.val_fraction, self.split_seed, self.seed = val_fraction, split_seed, seed
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.pin_memory = pin_memory
        self.tasks = idrid_tasks(self.lesions, focal_gamma, self.grades, focal_alpha, grading_focal)
        self.datasets: dict[str, IdridDataset] = {}
        self.cache_seconds = 0.0
        self._scanned: dict[str, list[IdridSample]] | None = None

    @property
    def has_validation(self) -> bool:
        """False with ``val_fraction=0`` (Roy 2025 trained on every training image): the run then
        tests its last weights instead of selecting them on a validation loss."""
        return self.val_fraction > 0

    def _wanted(self, samples: list[IdridSample]) -> list[IdridSample]:
        """The image sets that carry a chosen task (segmentation images: a lesion; grading: a grade)."""
        return [s for s in samples if (self.lesions if s.is_segmentation else self.grades)]

    def _splits(self) -> dict[str, list[IdridSample]]:
        """The scanned splits, once per instance (``prepare_data`` and ``setup`` both need them)."""
        if self._scanned is None:
            self._scanned = self._scan_splits()
        return self._scanned

    def _scan_splits(self) -> dict[str, list[IdridSample]]:
        def scan(split: str) -> list[IdridSample]:
            found = scan_idrid(
                self.root, split, lesions=bool(self.lesions), grades=bool(self.grades), skip_bad_samples=self.skip_bad_samples
            )
            return self._wanted(found)

        pool = scan("train")
        if not pool:
            raise DatasetError(f"No IDRiD training image for the tasks {[t.name for t in self.tasks]} under {self.root}.")
        train, val = _hold_out(pool, self.val_fraction, self.split_seed)
        return {"train": train, "val": val, "test": scan("test")}

    def prepare_data(self) -> None:
        samples = [s for split in self._splits().values() for s in split]
        self.cache_seconds = build_cache(self.cache, samples, self.resolution)[1]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for name, samples in self._splits().items():
            files, seconds = build_cache(self.cache, samples, self.resolution)
            self.cache_seconds += seconds
            transform = training_augmentation(self.seed) if name == "train" and self.augment else None
            self.datasets[name] = IdridDataset(
                samples, files, self.resolution, self.lesions, self.missing_mask, self.grades, transform=transform
            )
        log.info("IDRiD: %s", {k: len(v) for k, v in self.datasets.items()})

    def make_evaluator(self):
        from medmtl.metrics.idrid import IdridEvaluator

        return IdridEvaluator(self.tasks)
