"""EMOTIC as a LightningDataModule: one sample per annotated person, two inputs.

Inputs (``input_keys``): ``context``, the whole image, and ``body``, the person's body box, each
resized to a square (224 x 224 by default, Hervella et al. 2024: "the images ... are resized to a
common size of 224 x 224"; ``body_size`` 128 gives the preprocessed form's crops), RGB in [0, 1]
(the network normalises its inputs).

Settings (Hervella et al. 2024, section 5.1):

- ``2task``: ``categories`` (one 26-way multi-label task, BCE over the 26 sigmoid outputs) and
  ``dimensions`` (valence, arousal, dominance on 1-10, L1);
- ``26task``: each category is its own binary task (BCE), named ``affection`` ... ``yearning``
  (``doubt_confusion`` for Doubt/Confusion); no dimensions.

Splits: the dataset's train / val / test (70 / 10 / 20 %). Augmentation: a horizontal flip with
probability 1/2 of both inputs together (the paper's only augmentation), replayed from the
per-sample seeds of :class:`~medmtl.data.sampling.EpochSeededSampler`.

Layouts (:mod:`medmtl.data.emotic_layout`): the official ``Annotations.mat`` with the image
folders (converted once into ``cache_dir``), or the preprocessed arrays.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medmtl import losses
from medmtl.data.cache import SampleCache, source_key
from medmtl.data.contract import MultiTaskDataModule, SplitLoaders
from medmtl.data.emotic_layout import (
    CATEGORIES,
    LAYOUTS,
    MAT_FILE,
    SPLITS,
    EmoticRecords,
    category_task_name,
    detect_layout,
    read_mat,
    read_preprocessed,
    records_from_mat,
)
from medmtl.data.images import read_rgb
from medmtl.data.sampling import SampleKey, split_key
from medmtl.errors import ConfigError
from medmtl.tasks import Task

log = logging.getLogger(__name__)

SETTINGS = ("2task", "26task")
#: the dimensions' loss: the L1 of Hervella et al. 2024, or squared error (BayesAgg-MTL's regression)
DIMENSION_LOSSES = {"l1": losses.l1, "squared_error": losses.squared_error}


def emotic_tasks(setting: str, dimensions_loss: str = "l1") -> list[Task]:
    if dimensions_loss not in DIMENSION_LOSSES:
        raise ConfigError(f"data.dimensions_loss must be one of {tuple(DIMENSION_LOSSES)}, got {dimensions_loss!r}.")
    if setting == "2task":
        return [
            Task("categories", "multilabel", losses.multilabel_bce, num_outputs=len(CATEGORIES)),
            Task("dimensions", "regression", DIMENSION_LOSSES[dimensions_loss], num_outputs=3),
        ]
    if setting == "26task":
        return [Task(category_task_name(c), "binary", losses.binary_cross_entropy) for c in CATEGORIES]
    raise ConfigError(f"data.setting must be one of {SETTINGS}, got {setting!r}.")


def _square(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float in [0, 1], bilinear (aspect ratio not kept)."""
    if image.shape[:2] != (size, size):
        image = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


class EmoticDataset(Dataset):
    """Persons of one split. ``source(i)`` gives ``(context image, body image, categories,
    dimensions)`` as uint8 images and label arrays; this class sizes, flips and labels them."""

    def __init__(self, count: int, source, setting: str, context_size: int, body_size: int, augment: bool):
        self.count, self.source, self.setting = count, source, setting
        self.context_size, self.body_size, self.augment = context_size, body_size, augment

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        index, seed = split_key(key)
        context, body, categories, dimensions = self.source(index)
        sample = {"context": _square(context, self.context_size), "body": _square(body, self.body_size)}
        if self.augment and seed is not None and float(torch.rand(1, generator=torch.Generator().manual_seed(seed))) < 0.5:
            sample = {k: v.flip(-1) for k, v in sample.items()}
        categories = torch.tensor(np.asarray(categories, dtype=np.float32))
        if self.setting == "2task":
            sample["categories"] = categories
            sample["dimensions"] = torch.tensor(np.asarray(dimensions, dtype=np.float32))
        else:
            sample |= {category_task_name(c): categories[k] for k, c in enumerate(CATEGORIES)}
        sample["index"] = torch.tensor(index)
        return sample


class MatSource:
    """Persons of the official release: the image decoded completely, the body box cropped."""

    def __init__(self, root: Path, records: EmoticRecords):
        self.root, self.records = root, records

    def __call__(self, index: int):
        image = read_rgb(self.root / str(self.records.image[index]))
        x1, y1, x2, y2 = self.records.box[index]
        height, width = image.shape[:2]
        left, top = int(np.floor(min(x1, width - 1))), int(np.floor(min(y1, height - 1)))
        right, bottom = max(left + 1, int(np.ceil(min(x2, width)))), max(top + 1, int(np.ceil(min(y2, height))))
        return image, image[top:bottom, left:right], self.records.categories[index], self.records.dimensions[index]


class ArraySource:
    """Persons of the preprocessed form (memory-mapped arrays)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __call__(self, index: int):
        a = self.arrays
        return np.asarray(a["context"][index]), np.asarray(a["body"][index]), a["cat"][index], a["cont"][index]


class EmoticDataModule(SplitLoaders, MultiTaskDataModule):
    """Args: root; layout (``auto`` | ``mat`` | ``preprocessed``); setting (``2task`` | ``26task``);
    dimensions_loss (``l1`` | ``squared_error``: the 2-task setting's regression loss);
    context_size, body_size (square sides); augment (horizontal flips); batch_size,
    eval_batch_size, num_workers, pin_memory; seed (order and flips); cache_dir (the converted
    ``.mat``); skip_bad_samples (leave out the persons of missing images, logged and counted)."""

    input_keys = ("context", "body")

    def __init__(
        self,
        root: str,
        layout: str = "auto",
        setting: str = "2task",
        context_size: int = 224,
        body_size: int = 224,
        augment: bool = True,
        batch_size: int = 52,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        skip_bad_samples: bool = False,
        pin_memory: bool = False,
        dimensions_loss: str = "l1",
    ):
        super().__init__()
        if layout not in ("auto", *LAYOUTS):
            raise ConfigError(f"data.layout must be auto or one of {LAYOUTS}, got {layout!r}.")
        self.tasks = emotic_tasks(setting, dimensions_loss)
        self.root, self.layout_choice, self.setting = Path(root).expanduser(), layout, setting
        self.context_size, self.body_size, self.augment = int(context_size), int(body_size), augment
        self.batch_size, self.eval_batch_size, self.num_workers, self.pin_memory = (
            batch_size,
            eval_batch_size,
            num_workers,
            pin_memory,
        )
        self.seed, self.cache_dir, self.skip_bad_samples = seed, cache_dir, skip_bad_samples
        self.datasets: dict[str, EmoticDataset] = {}

    @property
    def layout(self) -> str:
        return self.layout_choice if self.layout_choice != "auto" else detect_layout(self.root)

    def prepare_data(self) -> None:
        self.layout  # noqa: B018 - a missing dataset is one sentence before anything else

    def records(self) -> dict[str, EmoticRecords]:
        """The persons of every split, from the cache (converted from the ``.mat`` file once)."""
        mat = self.root / MAT_FILE
        cache = SampleCache(self.cache_dir, "emotic", self.root)
        key = source_key([mat], skip_bad_samples=self.skip_bad_samples, version=1)

        def convert() -> dict[str, np.ndarray]:
            structs = read_mat(mat)
            arrays: dict[str, np.ndarray] = {}
            for split in SPLITS:
                arrays |= records_from_mat(self.root, structs[split], split, self.skip_bad_samples).arrays(split)
            return arrays

        cache.ensure([("annotations", key, convert)], f"EMOTIC annotations ({mat})")
        arrays = SampleCache.load(cache.path("annotations", key))
        return {split: EmoticRecords.from_arrays(arrays, split) for split in SPLITS}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        layout = self.layout
        records = self.records() if layout == "mat" else {}
        for split in SPLITS:
            augment = self.augment and split == "train"
            source: MatSource | ArraySource
            if layout == "mat":
                source, count = MatSource(self.root, records[split]), len(records[split])
            else:
                arrays = read_preprocessed(self.root, split)
                source, count = ArraySource(arrays), len(arrays["cat"])
            self.datasets[split] = EmoticDataset(count, source, self.setting, self.context_size, self.body_size, augment)
        log.info("EMOTIC (%s layout, %s setting): %s persons", layout, self.setting, self.split_sizes())

    def lazily_read(self, split: str) -> tuple[Dataset, list[Path]] | None:
        """The official layout's splits: a person's JPEG is decoded when drawn (the preprocessed
        arrays are read and checked whole at setup)."""
        dataset = self.datasets[split]
        if not isinstance(dataset.source, MatSource):
            return None
        return dataset, sorted({self.root / str(name) for name in dataset.source.records.image})

    def make_evaluator(self):
        from medmtl.metrics.emotic import EmoticEvaluator

        return EmoticEvaluator(self.tasks)


__all__ = ["SETTINGS", "EmoticDataModule", "emotic_tasks"]
