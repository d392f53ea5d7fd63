"""Recognising what a reused run folder holds, so that a rerun sweep trains only what is missing.

A run's identity is a digest of its resolved config without the keys that say where things go or
how they are logged (``paths``, ``logger``, ``callbacks``) or how a run starts (``ckpt_path``,
``auto_resume``, ``skip_finished``). ``identity.json`` records it when training starts and
``metrics.json`` when it ends. On reuse of a folder:

- ``metrics.json`` with the same digest: the run is finished and is not trained again;
- a sweep job whose folder holds another config's run (the sweep's job list changed) is refused:
  resuming from that checkpoint would mix two experiments;
- otherwise training starts, resuming from ``last.ckpt`` when there is one (a single run reused
  with, say, more epochs continues where it stopped).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medmtl.utils.outputs import atomic_write_text

#: Top-level keys that do not change what a run computes.
NOT_IDENTITY = ("paths", "logger", "callbacks", "ckpt_path", "auto_resume", "skip_finished")
IDENTITY_FILE = "identity.json"


class RunFolderConflict(RuntimeError):
    """A sweep job's folder holds a run of another configuration."""


def config_digest(cfg: DictConfig) -> str:
    """SHA-256 (first 16 hex digits) of the resolved config minus :data:`NOT_IDENTITY`."""
    container = OmegaConf.to_container(cfg, resolve=True)
    identity = {k: v for k, v in container.items() if k not in NOT_IDENTITY}
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _recorded_digest(output_dir: Path) -> str | None:
    for name in ("metrics.json", IDENTITY_FILE):
        path = output_dir / name
        if path.is_file():
            return json.loads(path.read_text()).get("config_digest")
    return None


def check_reused_folder(output_dir: Path, digest: str, in_sweep: bool) -> dict[str, Any] | None:
    """The finished record when ``output_dir`` holds this config's ``metrics.json``, else None.

    Raises :class:`RunFolderConflict` for a sweep job whose folder holds another config's run.
    """
    output_dir = Path(output_dir)
    recorded = _recorded_digest(output_dir)
    if recorded is None:
        return None
    if recorded == digest and (output_dir / "metrics.json").is_file():
        return json.loads((output_dir / "metrics.json").read_text())
    if recorded != digest and in_sweep:
        raise RunFolderConflict(
            f"The sweep folder {output_dir} holds a run of another configuration (the sweep's job list "
            "changed since it ran); rerun the same sweep command, or choose a new hydra.sweep.dir."
        )
    return None


def record_identity(output_dir: Path, digest: str) -> None:
    atomic_write_text(Path(output_dir) / IDENTITY_FILE, json.dumps({"config_digest": digest}) + "\n")
