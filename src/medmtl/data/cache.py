"""A cache of preprocessed samples, keyed on the content of their sources.

Large originals (4k fundus images) are resized once. Each cache entry is
``<cache_dir>/<dataset>/<root digest>/<name>-<key>.npz`` where the key is a digest of every source
file's path, size and modification time and of the preprocessing parameters: changing an image,
replacing a mask or choosing another size gives another key, so the entry is rebuilt rather than
silently reused. The entries of other keys for the same name are removed when a new one is
written. The root digest keeps two dataset folders (a synthetic twin and the real data) apart.

The cache lives under ``paths.cache_dir`` (``MEDMTL_CACHE_DIR``), never inside the dataset
folder, so that read-only dataset folders work. Entries are written atomically (a temporary file
renamed into place), so a crash or a second process building the same entry never leaves a
half-written one; a failed write removes its temporary file. Each entry has a ``.sha256`` beside
it, the digest of its content when written: an entry whose content no longer matches (truncated
or rewritten since) is rebuilt, with a warning, instead of breaking every later run. A cache
folder that cannot be written (full disk, no permission, a file in its place) ends the run in one
sentence (:class:`~medmtl.errors.StorageError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medmtl.errors import StorageError

log = logging.getLogger(__name__)

#: bump when the preprocessing code changes what an entry holds
CACHE_VERSION = 2


def source_key(sources: Iterable[Path | None], **parameters: object) -> str:
    """Digest of the sources' (path, size, mtime) and the preprocessing parameters."""
    described: list[list[object] | None] = []
    for source in sources:
        if source is None:
            described.append(None)
            continue
        stat = Path(source).stat()
        described.append([str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns])
    text = json.dumps({"sources": described, "parameters": parameters, "version": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_file_of(entry: Path) -> Path:
    """Where the recorded digest of a cache entry is kept (beside it)."""
    return entry.with_name(entry.name + ".sha256")


def default_cache_dir() -> Path:
    """``$MEDMTL_CACHE_DIR``, else ``~/.cache/medmtl`` (the configs pass ``paths.cache_dir``)."""
    return Path(os.environ.get("MEDMTL_CACHE_DIR", Path.home() / ".cache" / "medmtl"))


class SampleCache:
    """The cache entries of one dataset folder (see the module docstring)."""

    def __init__(self, cache_dir: str | os.PathLike | None, dataset: str, root: str | os.PathLike):
        cache_dir = default_cache_dir() if cache_dir is None else cache_dir
        root_digest = hashlib.sha256(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:8]
        self.folder = Path(cache_dir).expanduser() / dataset / root_digest

    def path(self, name: str, key: str) -> Path:
        return self.folder / f"{name}-{key}.npz"

    def ensure(self, entries: Sequence[tuple[str, str, Callable[[], Mapping[str, np.ndarray]]]], what: str) -> float:
        """Build the entries ``(name, key, build)`` that do not exist yet or whose content no longer
        matches its recorded digest; the seconds it took."""
        todo = [(n, k, b) for n, k, b in entries if not self.intact(self.path(n, k))]
        if not todo:
            return 0.0
        start = time.perf_counter()
        log.info(
            "Preprocessing %d %s into %s (once; the cache is rebuilt when a source file changes).", len(todo), what, self.folder
        )
        for name, key, build in todo:
            self._write(self.path(name, key), build)
        seconds = time.perf_counter() - start
        log.info("%s cached in %.1f s (%.2f s each).", what.capitalize(), seconds, seconds / len(todo))
        return seconds

    def intact(self, target: Path) -> bool:
        """Whether ``target`` exists and holds what was written (its recorded SHA-256)."""
        if not target.is_file():
            return False
        recorded = digest_file_of(target)
        if recorded.is_file() and recorded.read_text().strip() == file_digest(target):
            return True
        log.warning("Cache entry %s is damaged or unverified (content differs from when it was written): rebuilding it.", target)
        return False

    def _write(self, target: Path, build: Callable[[], Mapping[str, np.ndarray]]) -> None:
        arrays = build()
        partial = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npz")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            np.savez(partial, **arrays)  # type: ignore[arg-type]  # numpy stubs: **arrays
            digest_file_of(partial).write_text(file_digest(partial) + "\n")
            os.replace(digest_file_of(partial), digest_file_of(target))
            os.replace(partial, target)
        except OSError as error:
            raise StorageError(
                f"Cannot write the cache entry {target} ({error.strerror or error}): free disk space or point "
                "paths.cache_dir (MEDMTL_CACHE_DIR) to a writable folder."
            ) from error
        finally:
            for leftover in (partial, digest_file_of(partial)):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # nothing was written there
                    leftover.unlink()
        stem = target.name.rsplit("-", 1)[0]
        for stale in target.parent.glob(f"{stem}-*.npz"):
            if stale != target:
                stale.unlink(missing_ok=True)
                digest_file_of(stale).unlink(missing_ok=True)

    @staticmethod
    def load(path: Path) -> dict[str, np.ndarray]:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
