"""NYUDv2 as a LightningDataModule: semantic segmentation, depth, surface normals (and edges).

Layouts (:mod:`medmtl.data.nyudv2_layout`): ``mtan`` (13 classes, 288 x 384 ``.npy``) or
``nyud_mt`` (40 classes, jpg/png/npy, with edges), found in ``root`` or chosen by ``layout``.
Splits: the layout's ``train`` split trains; its ``val`` split (the 654 official test images) is
the test set, as in the papers, which report on it. ``val_fraction`` of the training images can
be held out for model selection; with 0 (the default, the protocol of Liu et al. 2019 and
Hervella et al. 2024) there is no validation split and the last weights are tested.

Sample: ``image`` (3, H, W) float in [0, 1] (networks normalise their input themselves), and per
task ``semseg`` (H, W) int64 with -1 unlabelled, ``depth`` (H, W) metres with 0 invalid, ``normals``
(3, H, W) unit vectors with 0 invalid, ``edge`` (H, W) {0, 1}; ``index``. ``resolution`` (H, W)
resizes every sample first (image bilinear, targets nearest; null keeps the files' size).

Augmentation (``augment``), replayed from the per-sample seeds of
:class:`~medmtl.data.sampling.EpochSeededSampler`:

- ``mtan`` (Liu et al. 2019's code, used by Hervella et al. 2024): crop a random window of
  1/s of the image with s in {1.0, 1.2, 1.5}, resize it back (depth divided by s: the scene
  comes closer), then a horizontal flip with probability 1/2;
- ``survey`` (Vandenhende et al. 2022's code): a random scale in [0.75, 1.25] (resized, then
  randomly cropped or padded back to the input size; padded pixels are unlabelled or invalid),
  then a horizontal flip with probability 1/2. Their code also rotates by up to 20 degrees; that
  is left out here, because rotating surface normals needs the dataset's axis convention, which
  the releases do not state (a documented deviation);
- ``none``.

A horizontal flip negates the x component of the normals (albumentations would not).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medmtl import losses
from medmtl.data.contract import MultiTaskDataModule, SplitLoaders
from medmtl.data.errors import DatasetError
from medmtl.data.nyudv2_layout import CLASSES, LAYOUT_TASKS, LAYOUTS, NyudSample, detect_layout, read_sample, scan_nyudv2
from medmtl.data.sampling import SampleKey, split_key
from medmtl.errors import ConfigError
from medmtl.tasks import Task, evaluated, mark_auxiliary

log = logging.getLogger(__name__)

AUGMENTATIONS = ("mtan", "survey", "scale_pad", "none")
NORMALS_LOSSES = {"cosine": losses.normals_cosine, "l1": losses.normals_l1}
#: the value of a pixel added by padding, per target: unlabelled / invalid
PAD_VALUE = {"image": 0.0, "semseg": -1, "depth": 0.0, "normals": 0.0, "edge": 0.0}


def nyudv2_tasks(
    layout: str, names: Sequence[str], normals_loss: str = "cosine", edge_positive_weight: float = 0.95
) -> list[Task]:
    """The chosen NYUDv2 tasks with their losses: cross-entropy over the labelled pixels, L1 on
    valid depth, 1 - cosine (or L1) on valid normals, class-balanced BCE on edges."""
    if normals_loss not in NORMALS_LOSSES:
        raise ConfigError(f"data.normals_loss must be one of {list(NORMALS_LOSSES)}, got {normals_loss!r}.")
    unknown = [n for n in names if n not in LAYOUT_TASKS["nyud_mt"]]
    if unknown or not names:
        raise ConfigError(f"data.tasks must name some of {list(LAYOUT_TASKS['nyud_mt'])}, got {list(names)}.")
    made = {
        "semseg": lambda: Task(
            "semseg",
            "semantic",
            partial(losses.semantic_cross_entropy, ignore_index=-1),
            num_outputs=CLASSES[layout],
            ignore_index=-1,
        ),
        "depth": lambda: Task("depth", "depth", losses.depth_l1),
        "normals": lambda: Task("normals", "normals", NORMALS_LOSSES[normals_loss]),
        "edge": lambda: Task("edge", "edge", partial(losses.balanced_bce, positive_weight=edge_positive_weight)),
    }
    return [made[name]() for name in names]


def _resize(value: torch.Tensor, size: Sequence[int], key: str) -> torch.Tensor:
    """Resize one entry: the image bilinearly, targets by nearest neighbour (labels stay labels)."""
    if tuple(value.shape[-2:]) == tuple(size):
        return value
    batched = value[None] if value.dim() == 3 else value[None, None]
    if key == "image":
        out = F.interpolate(batched.float(), size=tuple(size), mode="bilinear", align_corners=False)
    else:
        out = F.interpolate(batched.float(), size=tuple(size), mode="nearest")
    out = out[0] if value.dim() == 3 else out[0, 0]
    return out.to(value.dtype)


def horizontal_flip(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mirror every map; the normals' x component changes sign."""
    flipped = {key: value.flip(-1) for key, value in sample.items()}
    if "normals" in flipped:
        flipped["normals"] = flipped["normals"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
    return flipped


def seen_closer(sample: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """``sample`` after a zoom by ``scale``: the scene appears ``scale`` times closer, so its depth is divided by it."""
    if "depth" in sample:
        sample["depth"] = sample["depth"] / scale
    return sample


def mtan_scale_crop(sample: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Liu et al. 2019's RandomScaleCrop: a window of 1/s of the image, resized back, depth / s."""
    height, width = sample["image"].shape[-2:]
    scale = (1.0, 1.2, 1.5)[int(torch.randint(3, (1,), generator=generator))]
    h, w = int(height / scale), int(width / scale)
    top = int(torch.randint(height - h + 1, (1,), generator=generator))
    left = int(torch.randint(width - w + 1, (1,), generator=generator))
    out = {key: _resize(value[..., top : top + h, left : left + w], (height, width), key) for key, value in sample.items()}
    return seen_closer(out, scale)


def _place(value: torch.Tensor, top: int, left: int, height: int, width: int, fill: float) -> torch.Tensor:
    """A (height, width) window of ``value``: cropped at (top, left) along an axis where ``value``
    is larger, pasted at (top, left) on a ``fill`` canvas along an axis where it is smaller."""
    h, w = value.shape[-2:]
    (src_top, dst_top), rows = ((top, 0) if h >= height else (0, top)), min(h, height)
    (src_left, dst_left), cols = ((left, 0) if w >= width else (0, left)), min(w, width)
    canvas = torch.full((*value.shape[:-2], height, width), fill, dtype=value.dtype)
    canvas[..., dst_top : dst_top + rows, dst_left : dst_left + cols] = value[
        ..., src_top : src_top + rows, src_left : src_left + cols
    ]
    return canvas


def survey_zoom(sample: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The survey code's NYUD augmentation (Vandenhende et al. 2022; with the flip): a zoom s drawn
    from {1, 1.2, 1.5} about the image centre, i.e. the centred window of 1/s of the image resized
    back, and the depth divided by s (the scene seen s times closer); no rotation. Their code
    resamples the image and the normals bicubically, ours bilinearly and by nearest neighbour."""
    height, width = sample["image"].shape[-2:]
    scale = (1.0, 1.2, 1.5)[int(torch.randint(3, (1,), generator=generator))]
    h, w = round(height / scale), round(width / scale)
    top, left = (height - h) // 2, (width - w) // 2
    out = {key: _resize(value[..., top : top + h, left : left + w], (height, width), key) for key, value in sample.items()}
    return seen_closer(out, scale)


def scale_and_pad(sample: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random scale s in [0.75, 1.25], then a random crop (larger) or padding (smaller) back to the
    input size, the depth divided by s; padded pixels are unlabelled / invalid (:data:`PAD_VALUE`).
    The survey code's PASCAL-Context scaling without its rotation (``data.augment=scale_pad``)."""
    height, width = sample["image"].shape[-2:]
    scale = 0.75 + 0.5 * float(torch.rand(1, generator=generator))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    top = int(torch.randint(abs(h - height) + 1, (1,), generator=generator))
    left = int(torch.randint(abs(w - width) + 1, (1,), generator=generator))
    out = {key: _place(_resize(value, (h, w), key), top, left, height, width, PAD_VALUE[key]) for key, value in sample.items()}
    return seen_closer(out, scale)


GEOMETRIC = {"mtan": mtan_scale_crop, "survey": survey_zoom, "scale_pad": scale_and_pad}


class NYUDv2Dataset(Dataset):
    def __init__(
        self,
        samples: Sequence[NyudSample],
        layout: str,
        tasks: Sequence[str],
        resolution: Sequence[int] | None,
        augment: str = "none",
    ):
        if augment not in AUGMENTATIONS:
            raise ConfigError(f"data.augment must be one of {AUGMENTATIONS}, got {augment!r}.")
        self.samples, self.layout, self.tasks = list(samples), layout, list(tasks)
        self.resolution = tuple(resolution) if resolution else None
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        index, seed = split_key(key)
        arrays = read_sample(self.samples[index], self.layout)
        sample = {"image": torch.from_numpy(arrays["image"]).permute(2, 0, 1).contiguous()}
        sample |= {task: torch.from_numpy(arrays[task]) for task in self.tasks}
        if self.resolution is not None:
            sample = {k: _resize(v, self.resolution, k) for k, v in sample.items()}
        if self.augment != "none" and seed is not None:
            generator = torch.Generator().manual_seed(seed)
            sample = GEOMETRIC[self.augment](sample, generator)
            if float(torch.rand(1, generator=generator)) < 0.5:
                sample = horizontal_flip(sample)
        sample["index"] = torch.tensor(index)
        return sample


class NYUDv2DataModule(SplitLoaders, MultiTaskDataModule):
    """Args: root; layout (``auto`` | ``mtan`` | ``nyud_mt``); tasks (some of ``semseg``, ``depth``,
    ``normals``, ``edge``); resolution ([H, W] or null); augment (``mtan`` | ``survey`` | ``scale_pad``
    | ``none``; each but ``none`` with a horizontal flip);
    val_fraction and split_seed (validation held out of the training images); batch sizes,
    workers; seed (training order and augmentation draws); normals_loss (``cosine`` | ``l1``);
    edge_positive_weight; edge_thresholds (of the odsF metric); auxiliary_tasks (some of ``tasks``,
    trained and never evaluated: :func:`~medmtl.tasks.mark_auxiliary`)."""

    def __init__(
        self,
        root: str,
        layout: str = "auto",
        tasks: Sequence[str] = ("semseg", "depth", "normals"),
        resolution: Sequence[int] | None = None,
        augment: str = "mtan",
        val_fraction: float = 0.0,
        split_seed: int = 0,
        batch_size: int = 4,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        normals_loss: str = "cosine",
        edge_positive_weight: float = 0.95,
        edge_thresholds: int = 50,
        pin_memory: bool = False,
        auxiliary_tasks: Sequence[str] = (),
    ):
        super().__init__()
        if layout not in ("auto", *LAYOUTS):
            raise ConfigError(f"data.layout must be auto or one of {LAYOUTS}, got {layout!r}.")
        if augment not in AUGMENTATIONS:
            raise ConfigError(f"data.augment must be one of {AUGMENTATIONS}, got {augment!r}.")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}.")
        self.root, self.layout_choice, self.task_names = Path(root).expanduser(), layout, list(tasks)
        self.auxiliary_tasks = list(auxiliary_tasks)
        self.resolution = tuple(resolution) if resolution else None
        self.augment, self.val_fraction, self.split_seed, self.seed = augment, val_fraction, split_seed, seed
        self.batch_size, self.eval_batch_size, self.num_workers, self.pin_memory = (
            batch_size,
            eval_batch_size,
            num_workers,
            pin_memory,
        )
        self.normals_loss, self.edge_positive_weight, self.edge_thresholds = normals_loss, edge_positive_weight, edge_thresholds
        self.datasets: dict[str, NYUDv2Dataset] = {}
        self._tasks: list[Task] | None = None

    @property
    def tasks(self) -> list[Task]:  # type: ignore[override]  # read lazily: the classes depend on the layout on disk
        """The chosen tasks; the semantic classes depend on the layout (read from disk with ``auto``)."""
        if self._tasks is None:
            tasks = nyudv2_tasks(self.layout, self.task_names, self.normals_loss, self.edge_positive_weight)
            self._tasks = mark_auxiliary(tasks, self.auxiliary_tasks)
        return self._tasks

    @property
    def has_validation(self) -> bool:
        return self.val_fraction > 0

    @property
    def layout(self) -> str:
        return self.layout_choice if self.layout_choice != "auto" else detect_layout(self.root)

    def prepare_data(self) -> None:
        self.layout  # noqa: B018 - a missing dataset is one sentence before anything else

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        layout = self.layout
        pool = scan_nyudv2(self.root, layout, "train", self.task_names)
        if not pool:
            raise DatasetError(f"No NYUDv2 training sample under {self.root} ({layout} layout).")
        order = np.random.default_rng(self.split_seed).permutation(len(pool))
        n_val = int(round(self.val_fraction * len(pool)))
        splits = {
            "train": [pool[i] for i in sorted(order[n_val:])],
            "val": [pool[i] for i in sorted(order[:n_val])],
            "test": scan_nyudv2(self.root, layout, "val", self.task_names),
        }
        for name, samples in splits.items():
            augment = self.augment if name == "train" else "none"
            self.datasets[name] = NYUDv2Dataset(samples, layout, self.task_names, self.resolution, augment)
        log.info("NYUDv2 (%s layout, %s): %s", layout, ", ".join(self.task_names), self.split_sizes())

    def lazily_read(self, split: str) -> tuple[Dataset, list[Path]] | None:
        """Every split: a sample's image and label files are read when it is drawn."""
        dataset = self.datasets[split]
        return dataset, [path for sample in dataset.samples for path in sample.files.values()]

    def make_evaluator(self):
        from medmtl.metrics.scene import SceneEvaluator

        return SceneEvaluator(evaluated(self.tasks), edge_thresholds=self.edge_thresholds)
