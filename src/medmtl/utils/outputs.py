"""What a run leaves in its output folder besides Lightning's logs and checkpoints.

``metrics.json``: test metrics, number of parameters, mean seconds per training iteration, seed,
fold, the Hydra overrides and the chosen model/strategy/data, so that a report can aggregate runs
without parsing folder names. ``predictions.npz``: per-image test predictions (ROC curves, overlays).
Both are written atomically (a crash never leaves a half-written file).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics_json(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(Path(path), json.dumps(_jsonable(record), indent=2, sort_keys=True) + "\n")


def write_predictions(path: Path, predictions: Mapping[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in predictions.items()})  # type: ignore[arg-type]  # numpy stubs: **arrays
    os.replace(tmp, path)


def print_summary(title: str, metrics: Mapping[str, Any], console: Console | None = None) -> None:
    """A two-column table of the run's final numbers."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, float):
            text = f"{value:.4f}" if math.isfinite(value) else "nan"
        else:
            text = str(value)
        table.add_row(key, text)
    (console or Console()).print(table)
