"""The datamodule contract: everything the training module and the run need from a dataset.

A dataset of this project is a :class:`MultiTaskDataModule` (a LightningDataModule). Besides
Lightning's ``prepare_data`` / ``setup`` / ``*_dataloader`` hooks it declares:

- ``tasks``: the task set (:class:`~medmtl.tasks.Task`), in the order strategies visit them;
- ``input_keys``: the batch keys the network reads (``("image",)``; several inputs, such as a
  whole image and a person crop, are several keys). Nothing else in a batch is an input;
- ``make_evaluator()``: the dataset's metrics (:class:`~medmtl.metrics.contract.Evaluator`);
- ``split_sizes()``: samples per split after ``setup``; :meth:`check_splits` turns an empty split
  that a stage needs into one sentence instead of a run that ends with empty metrics;
- ``has_validation``: False when the protocol keeps no validation split (the last weights are
  then tested, nothing is selected on a validation loss);
- ``lazily_read(split)``: the dataset of a split whose samples are decoded only when drawn, and
  the files they read (None when ``setup`` already read and checked every sample): the run reads
  every such sample once before training (:mod:`medmtl.data.preflight`);
- ``separate_task_inputs``: True when each task has its own dataset and input (MedMNIST), so
  that one forward cannot serve every task; ``task_dataloader(task)`` then gives each task's own
  training loader (gradient accumulation draws from it).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from torch.utils.data import DataLoader, Dataset

from medmtl.data.errors import DatasetError
from medmtl.errors import ConfigError

if TYPE_CHECKING:
    from medmtl.metrics.contract import Evaluator
    from medmtl.tasks import Task

#: the splits each Lightning stage reads
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


class MultiTaskDataModule(L.LightningDataModule, abc.ABC):
    tasks: list[Task]
    input_keys: tuple[str, ...] = ("image",)
    separate_task_inputs: bool = False

    @property
    def has_validation(self) -> bool:
        return True

    @abc.abstractmethod
    def make_evaluator(self) -> Evaluator:
        """A fresh evaluator for this task set (one per stage)."""

    @abc.abstractmethod
    def split_sizes(self) -> dict[str, int]:
        """Samples per split (``train``, ``val``, ``test``) once ``setup`` has run."""

    def lazily_read(self, split: str) -> tuple[Dataset, list[Path]] | None:
        """``(dataset, files)`` when ``split``'s samples are decoded only when drawn; None (the
        default) when ``setup`` read and checked every sample already."""
        return None

    def task_dataloader(self, task: str) -> DataLoader:
        """One pass over ``task``'s own training data (datasets whose tasks have separate inputs)."""
        raise ConfigError(f"{type(self).__name__} has one training loader for all tasks, none per task.")

    def check_splits(self, stage: str) -> None:
        """Raise one sentence when a split that ``stage`` reads is empty."""
        sizes = self.split_sizes()
        for split in STAGE_SPLITS.get(stage, ()):
            if split == "val" and not self.has_validation:
                continue
            if sizes.get(split, 0) == 0:
                way_out = " (or set test=false to train without testing)" if split == "test" else ""
                raise DatasetError(
                    f"The {split} split of {type(self).__name__} is empty (split sizes: {sizes}): check "
                    f"data.root and the options that choose the splits{way_out}."
                )


class SplitLoaders:
    """Mixin: training shuffled, validation and test in order, all from ``self._loader(split,
    shuffle)``; ``split_sizes`` from ``self.datasets``. The default ``_loader`` reads the
    datamodule's ``batch_size``, ``eval_batch_size``, ``seed``, ``num_workers`` and ``pin_memory``:
    training batches come from an :class:`~medmtl.data.sampling.EpochSeededSampler` (order and
    augmentation draws replayed after a resume) and drop an incomplete last batch unless
    ``drop_incomplete_batch`` is False; evaluation loaders read this rank's shard
    (:func:`~medmtl.data.sampling.evaluation_sampler`)."""

    datasets: dict
    batch_size: int
    eval_batch_size: int
    seed: int
    num_workers: int = 0
    pin_memory: bool = False
    drop_incomplete_batch: bool = True

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        from medmtl.data.sampling import EpochSeededSampler, evaluation_sampler

        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            sampler=EpochSeededSampler(len(dataset), self.seed) if shuffle else evaluation_sampler(len(dataset)),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and self.drop_incomplete_batch and len(dataset) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def split_sizes(self) -> dict[str, int]:
        return {name: len(dataset) for name, dataset in self.datasets.items()}
