"""Writing a synthetic twin once, atomically, with one writer at a time.

:func:`write_once` runs the generator into a temporary sibling folder and renames it into place
only when it is complete, so a crash never leaves a half-written dataset that looks whole. An
exclusive lock (``.<name>.lock`` beside the folder) makes a second process that wants the same
dataset wait for the first and then reuse its result, instead of racing it and blaming the data.

A marker file records what was generated (the generator and its parameters). The same parameters
again: nothing is written. Other parameters in the same folder: refused in one sentence (delete
the folder, or point ``data.root`` elsewhere), since the loader would read a dataset that is not
the one configured.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medmtl.data.errors import DatasetError
from medmtl.utils.folder_lock import exclusive

log = logging.getLogger(__name__)


def _jsonable(spec: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(spec), default=list))


def write_once(root: str | Path, marker: str, generator: str, spec: Mapping[str, Any], write: Callable[[Path], None]) -> Path:
    """Make ``root`` hold the synthetic dataset ``generator(spec)``, calling ``write(folder)`` at
    most once (see the module docstring); return ``root``."""
    root = Path(root).expanduser()
    wanted = {"generator": generator, "spec": _jsonable(spec)}
    with exclusive(root.parent / f".{root.name}.lock"):
        found = root / marker
        if found.is_file():
            if json.loads(found.read_text()) != wanted:
                raise DatasetError(
                    f"{root} holds a synthetic dataset generated with other parameters ({found}); delete the folder "
                    "or point data.root elsewhere."
                )
            return root
        if root.exists() and any(root.iterdir()):
            raise DatasetError(
                f"{root} is not empty and holds no {marker} marker; refusing to write a synthetic "
                "dataset into it (point data.root elsewhere)."
            )
        partial = root.parent / f".{root.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            write(partial)
            (partial / marker).write_text(json.dumps(wanted, indent=2) + "\n")
            if root.exists():
                root.rmdir()  # empty: checked above
            os.replace(partial, root)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        log.info("Synthetic dataset written to %s.", root)
    return root
