"""Every sample a run will read, read once before the first training step.

Most readers decode and check every sample when the datamodule is set up (REFUGE and IDRiD build
their caches from every file, MedMNIST, MultiMNIST and EMOTIC's preprocessed arrays check whole
arrays). Datasets that decode a sample only when it is drawn (NYUDv2's image and label files,
EMOTIC's JPEGs) would meet a bad test file only when the test pass reaches it, hours later, or,
under DDP, on one rank only. Such a datamodule names its lazily read splits
(:meth:`~medmtl.data.contract.MultiTaskDataModule.lazily_read`): :func:`check_every_sample` reads
each of their samples (without augmentation), so that a bad file ends the run before training in
the reader's own sentence naming the file.

Reading is paid once per content: a marker under ``<cache_dir>/preflight/`` is keyed on the
files' paths, sizes and modification times and on the reader's settings (the sample cache's
:func:`~medmtl.data.cache.source_key`); a later run with the
same files and settings skips the pass, and changing a file (or a setting) checks again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from medmtl.data.cache import source_key

log = logging.getLogger(__name__)

#: bump when what a sample's reading checks changes
PREFLIGHT_VERSION = 1


def _identity(sample: Any) -> Any:
    return sample


def check_every_sample(
    datamodule, splits: Iterable[str], cache_dir: str | Path | None, settings: Mapping[str, Any], num_workers: int = 0
) -> list[str]:
    """Read every sample of ``splits`` that ``datamodule`` reads lazily; return the splits read
    (those whose marker was missing). A reader's error propagates unchanged (a DataLoader worker's
    is unwrapped by :func:`medmtl.errors.find_user_error`)."""
    read = []
    for split in splits:
        lazy = datamodule.lazily_read(split)
        if lazy is None:
            continue
        dataset, files = lazy
        if len(dataset) == 0:
            continue
        marker = None
        if cache_dir is not None:
            kind = type(datamodule).__name__
            key = source_key(sorted(set(files)), kind=kind, split=split, settings=settings, preflight=PREFLIGHT_VERSION)
            marker = Path(cache_dir) / "preflight" / f"{kind}-{split}-{key}"
            if marker.is_file():
                continue
        started = time.perf_counter()
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity)
        for _ in loader:  # each sample's reading checks its files and values
            pass
        log.info("Read every %s sample once before training (%d, %.1f s).", split, len(dataset), time.perf_counter() - started)
        read.append(split)
        if marker is not None:
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"{len(dataset)} samples read {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            except OSError as error:  # the check ran; only its record for later runs is lost
                log.warning("Could not record the data check in %s (%s); the next run reads the samples again.", marker, error)
    return read
