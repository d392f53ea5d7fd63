"""REFUGE as a LightningDataModule: four tasks (glaucoma, OD, OC, fovea) from the official layout.

Protocols (``protocol``):
- ``cv`` (Pascal et al. 2022 Tables 1-2): Training400 + Validation400 merged and split into ``n_folds``
  stratified folds with ``split_seed``; ``fold`` is the validation fold; Test400 is the test set.
- ``official`` (Tables 3-4): train on Training400, select on Validation400, test on Test400.

Each sample is a dict: ``image`` (3, S, S) float in [0, 1]; ``od``, ``oc`` (S, S) float {0, 1};
``fovea_heatmap`` (S, S); ``glaucoma`` () float; ``fovea_xy`` (2,) in S-grid pixels;
``original_wh`` (2,); ``index``. Image, both masks and the fovea point are augmented together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from medmtl.data.cache import SampleCache
from medmtl.data.contract import MultiTaskDataModule, SplitLoaders
from medmtl.data.folds import stratified_fold
from medmtl.data.heatmap import gaussian_heatmap, scaled_variance
from medmtl.data.images import decode_refuge_mask
from medmtl.data.refuge_cache import ensure_cache
from medmtl.data.refuge_layout import RefugeSample, scan_refuge
from medmtl.data.sampling import SampleKey, split_key
from medmtl.errors import ConfigError
from medmtl.metrics.refuge import RefugeEvaluator
from medmtl.postprocess import vertical_cup_to_disc_ratio
from medmtl.tasks import Task, refuge_tasks

log = logging.getLogger(__name__)

PROTOCOLS = ("cv", "official")


def training_augmentation(seed: int) -> A.Compose:
    """Spatial transforms move the image, both masks and the fovea together; colour ones the image only."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15), p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=10, val_shift_limit=10, p=0.3),
        ],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        seed=seed,
    )


class RefugeDataset(Dataset):
    """Reads cached, resized samples; see the module docstring for the sample dict."""

    def __init__(
        self,
        samples: Sequence[RefugeSample],
        cache_files: Sequence[Path],
        image_size: int,
        heatmap_variance: float,
        transform: A.Compose | None = None,
    ):
        self.samples = list(samples)
        self.cache_files = list(cache_files)
        self.image_size = image_size
        self.variance = scaled_variance(image_size, heatmap_variance)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def fovea_on_grid(self, index: int, original_wh: np.ndarray) -> tuple[float, float]:
        """Fovea (x, y) mapped from original pixels to the S x S grid (pixel centres at integers)."""
        x, y = self.samples[index].fovea_xy
        scale_x = self.image_size / float(original_wh[0])
        scale_y = self.image_size / float(original_wh[1])
        return (x + 0.5) * scale_x - 0.5, (y + 0.5) * scale_y - 0.5

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        """``key``: an index, or ``(index, augmentation seed)`` from :class:`EpochSeededSampler`."""
        index, augmentation_seed = split_key(key)
        sample = self.samples[index]
        entry = SampleCache.load(self.cache_files[index])
        image = entry["image"]
        od, oc = decode_refuge_mask(entry["mask"])
        fovea = self.fovea_on_grid(index, entry["original_wh"])
        if self.transform is not None:
            if augmentation_seed is not None:
                self.transform.set_random_seed(augmentation_seed)
            out = self.transform(image=image, masks=[od, oc], keypoints=np.array([fovea], dtype=np.float32))
            image, (od, oc), fovea = out["image"], out["masks"], tuple(out["keypoints"][0])
        size = self.image_size
        heatmap = gaussian_heatmap(size, size, fovea[0], fovea[1], self.variance)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0),
            "od": torch.from_numpy(np.ascontiguousarray(od)).float(),
            "oc": torch.from_numpy(np.ascontiguousarray(oc)).float(),
            "fovea_heatmap": torch.from_numpy(heatmap),
            "glaucoma": torch.tensor(float(sample.label)),
            "fovea_xy": torch.tensor(fovea, dtype=torch.float32),
            "original_wh": torch.from_numpy(entry["original_wh"]).float(),
            "index": torch.tensor(index),
        }

    def ground_truth_vcdr(self) -> np.ndarray:
        """vCDR of every sample's ground-truth masks on the S grid (features of the logistic regression)."""
        values = []
        for path in self.cache_files:
            od, oc = decode_refuge_mask(SampleCache.load(path)["mask"])
            values.append(vertical_cup_to_disc_ratio(od, oc))
        return np.asarray(values, dtype=np.float64)

    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


class RefugeDataModule(SplitLoaders, MultiTaskDataModule):
    """REFUGE in its official layout; see the module docstring.

    Args:
        root: folder holding ``Training400/``, ``REFUGE-Validation400/``, ``Test400/`` and the GT folders
            (only read).
        cache_dir: where the resized images are cached (``paths.cache_dir``; :mod:`medmtl.data.cache`).
        protocol: ``cv`` or ``official``.
        fold, n_folds, split_seed: the CV fold; the split depends on ``split_seed`` only.
        image_size: side of the square network input (256 in Pascal et al. 2022); images are cached at it.
        augment: albumentations on the training split. ``seed`` fixes the training order and
            the augmentation of every sample in every epoch (:mod:`medmtl.data.sampling`).
        heatmap_variance: fovea Gaussian variance in px^2 on a 256 grid (scaled with image_size).
        focal_gamma: gamma of the glaucoma focal loss.
    """

    def __init__(
        self,
        root: str,
        protocol: str = "cv",
        fold: int = 0,
        n_folds: int = 5,
        split_seed: int = 0,
        image_size: int = 256,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: bool = True,
        seed: int = 0,
        heatmap_variance: float = 50.0,
        focal_gamma: float = 2.0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"data.protocol must be one of {PROTOCOLS}, got {protocol!r}.")
        self.root = Path(root).expanduser()
        self.cache = SampleCache(cache_dir, "refuge", self.root)
        self.protocol = protocol
        self.fold, self.n_folds, self.split_seed = fold, n_folds, split_seed
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.augment, self.seed = augment, seed
        self.heatmap_variance = heatmap_variance
        self.pin_memory = pin_memory
        self.tasks: list[Task] = refuge_tasks(focal_gamma)
        self.datasets: dict[str, RefugeDataset] = {}

    def prepare_data(self) -> None:
        ensure_cache(self.cache, scan_refuge(self.root), self.image_size)

    def split_samples(self, samples: list[RefugeSample]) -> dict[str, list[RefugeSample]]:
        by_split = {s: [x for x in samples if x.split == s] for s in ("train", "val", "test")}
        if self.protocol == "official":
            return by_split
        pool = by_split["train"] + by_split["val"]
        train_idx, val_idx = stratified_fold([s.label for s in pool], self.n_folds, self.fold, self.split_seed)
        return {"train": [pool[i] for i in train_idx], "val": [pool[i] for i in val_idx], "test": by_split["test"]}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        samples = scan_refuge(self.root)
        for split, chosen in self.split_samples(samples).items():
            files = ensure_cache(self.cache, chosen, self.image_size)
            transform = training_augmentation(self.seed) if split == "train" and self.augment else None
            self.datasets[split] = RefugeDataset(chosen, files, self.image_size, self.heatmap_variance, transform)
        counts = {k: len(v) for k, v in self.datasets.items()}
        log.info("REFUGE %s protocol (fold %s): %s samples.", self.protocol, self.fold, counts)

    def make_evaluator(self) -> RefugeEvaluator:
        """Pascal et al. 2022's metrics; the vCDR logistic regression is fitted on the training split's ground truth."""
        train = self.datasets["train"]
        return RefugeEvaluator(train.ground_truth_vcdr(), train.labels())
