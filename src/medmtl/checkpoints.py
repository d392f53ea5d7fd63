"""Checkpoints are data, never code: reading, checking and writing them safely.

Reading. Every checkpoint is unpickled with ``torch.load(weights_only=True)``: only tensors, plain
containers, numbers and strings are rebuilt, so a crafted file cannot run code. What the project
writes fits that (model, optimizer and scheduler states, Lightning's loop and callback states, the
random states of :mod:`medmtl.utils.rng` as tensors and tuples). :func:`read_checkpoint` turns every
way a file can fail into one :class:`~medmtl.errors.CheckpointError` naming the file: missing,
truncated or not a PyTorch file, holding a non-data object (the object is named and never built).
:func:`check_fits` refuses a foreign file (no Lightning ``state_dict``) or one of another model
(missing, unexpected or differently shaped weights, listed) before Lightning is given it.

Writing. :class:`AtomicCheckpointIO` writes ``<name>.tmp`` and renames it over the target, so a
crash or a full disk during a save leaves the previous ``last.ckpt`` whole (Lightning writes the
target file in place).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.nn.parameter import is_lazy

from medmtl.errors import CheckpointError


def _refused_object(error: Exception) -> str:
    match = re.search(r"GLOBAL ([\w.]+)|Unsupported global: ([\w.]+)|Unsupported operand (\d+)", str(error))
    if match is None:
        return "an object that is not data"
    return next(g for g in match.groups() if g)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one sentence for every failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"Refusing to load {path}: it holds {_refused_object(error)}, which is code rather than data "
            "(checkpoints are read as tensors and plain containers only); use a checkpoint this project wrote."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        text = "" if isinstance(error, OSError) and error.errno else str(error).strip()
        detail = f" ({text.splitlines()[0]})" if text else ""
        raise CheckpointError(f"Cannot read checkpoint {path}: it is truncated or not a PyTorch checkpoint{detail}.") from None


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def check_fits(path: str | os.PathLike, expected: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read ``path`` and check that its ``state_dict`` has exactly the keys and shapes of
    ``expected`` (a module's ``state_dict()``; lazy parameters, not sized yet, match any shape);
    return the checkpoint."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a checkpoint of this project (it has no Lightning state_dict).")
    found = checkpoint["state_dict"]
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = [
        f"{k} is {_shape(found[k])} in the file but {_shape(expected[k])} in the model"
        for k in expected
        if k in found and not is_lazy(expected[k]) and _shape(found[k]) != _shape(expected[k])
    ]  # a lazy parameter (LDC-MTL's router before its first step) takes the file's shape
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if reshaped:
            problems.append(f"{len(reshaped)} of another shape ({'; '.join(reshaped[:2])})")
        raise CheckpointError(
            f"{path} does not fit this model: {', '.join(problems)}; it was trained with another model or task "
            "set (src/eval.py rebuilds both from the run folder's config_resolved.yaml)."
        )
    return checkpoint


def check_resumes(checkpoint: Mapping[str, Any], path: str | os.PathLike, strategy_name: str) -> None:
    """A checkpoint resumes only the strategy that wrote it: its optimizer states, step counters and
    strategy buffers are that strategy's (another one would fail inside torch's optimizer loading,
    or worse, load and continue as a method that never ran). Checkpoints written before the
    strategy was recorded are not checked."""
    written_by = checkpoint.get("medmtl_strategy")
    if written_by is not None and written_by != strategy_name:
        raise CheckpointError(
            f"{path} was written by optim={written_by} and this run trains optim={strategy_name}: a checkpoint "
            f"resumes only the strategy that wrote it (add optim={written_by}, or train without ckpt_path)."
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` into a temporary file, renamed over the target when complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Every load goes through :func:`read_checkpoint`: ``weights_only=True`` whatever the caller
        asked, tensors on the CPU (Lightning moves the states to the module's device)."""
        return read_checkpoint(path)
