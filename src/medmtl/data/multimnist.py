"""MultiMNIST (Sener & Koltun 2018): two overlapping MNIST digits per image, one task per digit.

Built from the standard MNIST files (:mod:`medmtl.data.mnist_idx`) as the authors' code builds it
(their ``multi_mnist_loader.py``, read, not copied): every MNIST image of a split is the *left*
digit of one MultiMNIST image, paired with a *right* digit drawn uniformly from the same split.
On a 36 x 36 canvas the left digit fills rows and columns 0-27 and the right one 6-33; where they
overlap (6-27) each pixel is the brighter of the two. The canvas is byte-scaled to 0-255 (its
minimum to 0, its maximum to 255, rounded: what ``scipy.misc.imresize`` did to a float array) and
resized to 28 x 28 by nearest neighbour (PIL's, which ``imresize`` called). So 60,000 training and
10,000 test images, the left and right digit labels as the tasks ``left`` and ``right``; inputs are
normalised with MNIST's mean 0.1307 and standard deviation 0.3081, as in the authors' code.

The authors drew the partners with an unseeded ``np.random.permutation``; here they come from
``pair_seed`` (the same distribution, and the same images in every run). The authors train on the
60,000 and evaluate on the 10,000 at every epoch, with no validation split; ``val_size`` (default
0: their protocol, the last weights are tested) holds that many training images out instead. The
composed arrays are cached (``cache_dir``) keyed by the MNIST files and the pairing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from medmtl import losses
from medmtl.data import mnist_idx
from medmtl.data.cache import SampleCache, source_key
from medmtl.data.contract import MultiTaskDataModule, SplitLoaders
from medmtl.data.sampling import SampleKey, split_key
from medmtl.errors import ConfigError
from medmtl.tasks import Task

log = logging.getLogger(__name__)

MEAN, STD = 0.1307, 0.3081
CANVAS, OFFSET, SIZE = 36, 6, 28


def multimnist_tasks() -> list[Task]:
    """The two ten-class tasks: the top-left digit and the bottom-right one (cross-entropy, as the
    authors' log-softmax and NLL)."""
    loss = losses.cross_entropy
    return [Task("left", "multiclass", loss, num_outputs=10), Task("right", "multiclass", loss, num_outputs=10)]


def bytescale(canvas: np.ndarray) -> np.ndarray:
    """Linear map of the canvas's range onto 0-255, rounded half up (a constant canvas maps to 0)."""
    low, high = float(canvas.min()), float(canvas.max())
    scale = 255.0 / (high - low) if high > low else 1.0
    return ((canvas - low) * scale).clip(0, 255).__add__(0.5).astype(np.uint8)


def compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """One 28 x 28 MultiMNIST image from two 28 x 28 digits (module docstring)."""
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float64)
    canvas[:SIZE, :SIZE] = left
    canvas[OFFSET : OFFSET + SIZE, OFFSET : OFFSET + SIZE] = right
    canvas[OFFSET:SIZE, OFFSET:SIZE] = np.maximum(left[OFFSET:, OFFSET:], right[: SIZE - OFFSET, : SIZE - OFFSET])
    return np.asarray(Image.fromarray(bytescale(canvas)).resize((SIZE, SIZE), Image.Resampling.NEAREST))


def compose_split(images: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every image as the left digit of one pair, its partner drawn uniformly from the split."""
    partners = np.random.default_rng(seed).integers(0, len(images), size=len(images))
    composed = np.stack([compose(images[i], images[j]) for i, j in enumerate(partners)]) if len(images) else images
    return {"image": composed.astype(np.uint8), "left": labels.astype(np.int64), "right": labels[partners].astype(np.int64)}


class MultiMNISTDataset(Dataset):
    """Normalised (1, 28, 28) float images with their ``left`` and ``right`` labels."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        images = torch.from_numpy(arrays["image"]).float().div_(255.0)
        self.images = images.sub_(MEAN).div_(STD).unsqueeze(1)
        self.left, self.right = torch.from_numpy(arrays["left"]), torch.from_numpy(arrays["right"])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        index, _ = split_key(key)  # no augmentation: the draw is not used
        return {"image": self.images[index], "left": self.left[index], "right": self.right[index]}


class MultiMNISTDataModule(SplitLoaders, MultiTaskDataModule):
    """Args: root (the folder holding ``MNIST/raw``); pair_seed (the partners); val_size (training
    images held out for validation, 0 = the authors' protocol); batch_size (256 in the authors'
    configurations), eval_batch_size, num_workers, pin_memory; seed (training order); cache_dir."""

    def __init__(
        self,
        root: str,
        pair_seed: int = 0,
        val_size: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0 (training images held out for validation), got {val_size}.")
        self.tasks = multimnist_tasks()
        self.root, self.pair_seed, self.val_size = Path(root).expanduser(), int(pair_seed), int(val_size)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.pin_memory, self.seed, self.cache_dir = num_workers, pin_memory, seed, cache_dir
        self.datasets: dict[str, MultiMNISTDataset] = {}

    @property
    def has_validation(self) -> bool:
        return self.val_size > 0

    def prepare_data(self) -> None:
        for split in mnist_idx.FILES:
            mnist_idx.read_split(self.root, split)  # a missing or malformed file: one sentence first

    def composed(self) -> dict[str, dict[str, np.ndarray]]:
        """The composed train and test arrays (from the cache after the first time)."""
        sources = [mnist_idx.find(self.root, name) for names in mnist_idx.FILES.values() for name in names]
        cache = SampleCache(self.cache_dir, "multimnist", self.root)
        key = source_key(sources, pair_seed=self.pair_seed, version=1)

        def build() -> dict[str, np.ndarray]:
            arrays: dict[str, np.ndarray] = {}
            for offset, split in enumerate(mnist_idx.FILES):
                images, labels = mnist_idx.read_split(self.root, split)
                for name, array in compose_split(images, labels, self.pair_seed + offset).items():
                    arrays[f"{split}/{name}"] = array
            return arrays

        cache.ensure([("pairs", key, build)], f"MultiMNIST pairs ({self.root})")
        arrays = SampleCache.load(cache.path("pairs", key))
        return {split: {name: arrays[f"{split}/{name}"] for name in ("image", "left", "right")} for split in mnist_idx.FILES}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        composed = self.composed()
        train, test = composed["train"], composed["test"]
        if self.val_size >= len(train["image"]):
            raise ConfigError(f"data.val_size={self.val_size} leaves no training image (the split has {len(train['image'])}).")
        cut = len(train["image"]) - self.val_size
        self.datasets = {
            "train": MultiMNISTDataset({k: v[:cut] for k, v in train.items()}),
            "val": MultiMNISTDataset({k: v[cut:] for k, v in train.items()}),
            "test": MultiMNISTDataset(test),
        }
        log.info("MultiMNIST (pair seed %d): %s images", self.pair_seed, self.split_sizes())

    def make_evaluator(self):
        from medmtl.metrics.classification import AccuracyEvaluator

        return AccuracyEvaluator(self.tasks)


__all__ = ["MultiMNISTDataModule", "compose", "compose_split", "multimnist_tasks"]
