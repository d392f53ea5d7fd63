"""Shuffling and augmentation draws that depend on (seed, epoch) only, so that a resumed run replays them.

A ``RandomSampler`` draws its permutation from the global torch RNG when its iterator is
created, and albumentations' ``Compose`` keeps an RNG of its own that no checkpoint holds. After a
crash, a run restarted from the last end-of-epoch checkpoint would therefore see other orders and
other augmentations than the uninterrupted run. :class:`EpochSeededSampler` removes both sources:
for epoch ``e`` it seeds a private generator with ``(seed, e)``, draws the permutation and one
augmentation seed per sample, and yields ``(index, augmentation_seed)`` keys; a dataset that
accepts such keys (:func:`split_key`) reseeds its transform before augmenting the sample. The
result does not depend on the number of DataLoader workers either.

Under data parallelism (``trainer=ddp``, Lightning's own sampler replacement off) each rank keeps
every R-th key of the same pass, from its rank on, after truncating the pass to a multiple of R:
batch j of rank r is then samples (j B + i) R + r, i < B, of the permutation, and the union of the
ranks' batch j is batch j of one process with batches of R x B. Evaluation shards
(:func:`evaluation_sampler`) are not padded: each sample is evaluated once, on one rank.

Lightning calls ``set_epoch`` before every training epoch (also on the first epoch after a
resume). The endless per-task loaders of gradient accumulation set it to their pass number and,
after a resume, ``skip`` the keys the checkpointed pass had already used. A sampler whose epoch
was never set draws its generator seed from the global torch RNG, like ``RandomSampler``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from medmtl.distributed import data_parallel_rank
from medmtl.errors import ConfigError

#: Keys a dataset receives: a plain index, or (index, augmentation seed) from the sampler.
SampleKey = int | tuple[int, int]

_EPOCH_STRIDE = 1_000_003  # a prime, so that (seed, epoch) pairs map to distinct generator seeds


def split_key(key: SampleKey) -> tuple[int, int | None]:
    """``(index, augmentation seed or None)`` from a dataset key."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


class EvaluationShard(Sampler[int]):
    """Indices ``rank, rank + R, ...`` of ``range(n)``, in order, without padding."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def evaluation_sampler(n: int) -> EvaluationShard | None:
    """This rank's shard of an evaluation split of ``n`` samples (None, in order, on one process)."""
    rank, world_size = data_parallel_rank()
    return EvaluationShard(n, rank, world_size) if world_size > 1 else None


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """A shuffled pass over ``range(n)`` determined by ``(seed, epoch)``, with a seed per sample;
    this rank's share of it under data parallelism (module docstring)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int | None = None, world_size: int | None = None):
        if n <= 0:
            raise ValueError(f"EpochSeededSampler needs at least one sample, got n={n}.")
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        detected = data_parallel_rank()  # the process group's, unless given
        self.rank = detected[0] if rank is None else rank
        self.world_size = detected[1] if world_size is None else world_size
        if n < self.world_size:
            raise ConfigError(f"{n} training samples cannot be shared by {self.world_size} processes: use fewer trainer.devices.")
        self.epoch: int | None = None
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, count: int) -> None:
        """Start the next pass after its first ``count`` keys (a pass resumed part-way)."""
        self.start = int(count)

    def generator(self) -> torch.Generator:
        """A fresh generator seeded by (seed, epoch): the pass's permutation and augmentation seeds
        come from one; a DataLoader given one as ``generator`` draws its workers' base seed from it
        rather than from the global RNG."""
        if self.epoch is None:
            base = int(torch.empty((), dtype=torch.int64).random_().item())
        else:
            base = self.seed * _EPOCH_STRIDE + self.epoch
        return torch.Generator().manual_seed(base % 2**63)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = self.generator()
        order = torch.randperm(self.n, generator=generator) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=generator)
        keys = list(zip(order.tolist(), seeds[order].tolist()))
        start, self.start = self.start, 0
        yield from self._share(keys)[start:]

    def _share(self, keys: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """This rank's keys of a pass: every R-th from its rank on, of the pass cut to a multiple of R."""
        if self.world_size == 1:
            return keys
        usable = self.n - self.n % self.world_size
        return keys[:usable][self.rank :: self.world_size]

    def __len__(self) -> int:
        return self.n // self.world_size
