"""One writer per folder: an exclusive lock on ``<folder>/.lock`` for as long as a process writes it.

The lock is ``fcntl.flock`` on the file: the operating system releases it when the holder exits,
however it exits (``kill -9`` included), so a crashed run never leaves a stale lock. The file
itself names the holder (process, host, start time, command), so that a refused second process
can say who holds the folder. A process that already holds a folder's lock may ask for it again
(a single run's folder is locked before Hydra writes into it, then again by the job).

:func:`exclusive` waits for the lock instead (``wait=True``): two processes generating the same
synthetic dataset take turns, and the second finds the first one's result.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from medmtl.errors import RunFolderConflict

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks; folders are then unguarded
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"

#: folder -> open lock file, for the locks this process holds
_HELD: dict[Path, IO[str]] = {}


def _holder() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }


def _describe(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        holder = {}
    if not holder:
        return "another process"
    return f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} ({holder.get('command')})"


def acquire(folder: str | Path, what: str = "run folder") -> None:
    """Take ``folder``'s lock or raise :class:`RunFolderConflict` naming the process that holds it."""
    folder = Path(folder).resolve()
    if folder in _HELD or fcntl is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held open for the process: the lock lives as long as the handle)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe(handle)
        handle.close()
        raise RunFolderConflict(
            f"The {what} {folder} is in use by {holder}; wait until it finishes, or choose another folder."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_holder()))
    handle.flush()
    _HELD[folder] = handle


def release(folder: str | Path) -> None:
    handle = _HELD.pop(Path(folder).resolve(), None)
    if handle is not None:
        handle.close()  # closing the descriptor releases the flock


def holds(folder: str | Path) -> bool:
    return Path(folder).resolve() in _HELD


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Wait for, then hold, the lock file ``path`` (not a folder's ``.lock``) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
