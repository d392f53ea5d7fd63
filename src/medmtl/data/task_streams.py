"""Endless per-task training loaders whose positions are checkpointed (gradient accumulation).

A strategy that draws its own batches per task (``optim=ga``) reads task k from the datamodule's
``task_dataloader(k)`` when the datamodule has one (one dataset per task), otherwise from a
separate ``train_dataloader()`` per task. Each pass over a loader is one "epoch" of its
:class:`~medmtl.data.sampling.EpochSeededSampler`: pass p of task k uses epoch p (its own loader)
or p * T + k (every task reading the training loader, so that their orders differ). The position
(pass, batches used in it) of every task is the state to checkpoint: a resumed run replays the
pass and skips what was used, so GA resumes exactly. A loader with another sampler (a validation
loader reads in order) skips the used batches by reading them.

The stream named :data:`VALIDATION` is an endless pass over the validation loader, for strategies
that look at validation batches while training (Auto-Lambda), checkpointed the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from medmtl.data.sampling import EpochSeededSampler
from medmtl.errors import ConfigError
from medmtl.tasks import VALIDATION


class TaskBatchStreams:
    def __init__(self, task_names: Sequence[str]):
        self.task_names = list(task_names)
        self.positions: dict[str, list[int]] = {}  # task -> [pass, batches used in it]
        self._iterators: dict[str, Iterator] = {}

    def next_batch(self, datamodule, task: str):
        """The next batch of ``task``'s stream (created on first use, from its checkpointed position)."""
        if task not in self._iterators:
            self._iterators[task] = self._endless(datamodule, task)
        return next(self._iterators[task])

    def _loader(self, datamodule, task: str):
        if task == VALIDATION:
            loader = datamodule.val_dataloader()
            if isinstance(loader, (list, tuple)):
                raise ConfigError(
                    "this strategy reads validation batches of every task at once; this dataset has one loader per task."
                )
            return loader
        if datamodule.separate_task_inputs:
            return datamodule.task_dataloader(task)
        return datamodule.train_dataloader()

    def _endless(self, datamodule, task: str):
        position = self.positions.setdefault(task, [0, 0])
        own_loader = task == VALIDATION or datamodule.separate_task_inputs
        task_index = 0 if task == VALIDATION else self.task_names.index(task)
        # one loader per stream, re-iterated pass after pass: with persistent workers its worker
        # processes start once, not at every pass (the samples' augmentation draws come from their
        # sampler keys, not from the workers' random state, so reusing workers changes no batch)
        loader = self._loader(datamodule, task)
        while True:
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, EpochSeededSampler):
                epoch = position[0] if own_loader else position[0] * len(self.task_names) + task_index
                sampler.set_epoch(epoch)
                sampler.skip(position[1] * loader.batch_size)
                # the iterator draws its workers' base seed from this, not from the global RNG
                # (a resumed run creates one more iterator than the uninterrupted one)
                loader.generator = sampler.generator()
                batches = iter(loader)
            else:
                batches = itertools.islice(iter(loader), position[1], None)
            for batch in batches:
                position[1] += 1
                yield batch
            position[0], position[1] = position[0] + 1, 0

    def close(self) -> None:
        """Drop the streams (and their loaders' worker processes); the positions are kept, so the
        next batch of a task continues where its stream stood."""
        self._iterators = {}

    def state_dict(self) -> dict[str, list[int]]:
        return {task: list(p) for task, p in self.positions.items()}

    def load_state_dict(self, positions: dict[str, list[int]]) -> None:
        """Positions from a checkpoint; the streams restart from them on their next batch."""
        self.positions = {task: list(p) for task, p in positions.items()}
        self._iterators = {}
