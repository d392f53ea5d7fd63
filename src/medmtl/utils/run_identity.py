"""Recognising what a reused run folder holds: one folder, one configuration.

A run's identity is a digest of its resolved config without the keys that say where things go or
how they are logged (``paths``, ``logger``, ``callbacks``, ``hydra``) or how a run starts
(``ckpt_path``, ``auto_resume``, ``skip_finished``). ``identity.json`` records it when training
starts and ``metrics.json`` when it ends. On reuse of a folder:

- ``metrics.json`` with the same digest: the run is finished and is not trained again (a rerun
  sweep trains only what is missing);
- the same digest without ``metrics.json``: the run was interrupted and resumes from ``last.ckpt``;
- another digest: refused, in a single run as in a sweep. Resuming would mix two experiments and
  the new record would claim a configuration the weights were not trained with. To continue a
  finished run with more epochs, start a new run from its checkpoint
  (``ckpt_path=<run>/checkpoints/last.ckpt trainer.max_epochs=...``).

Single runs are checked before Hydra writes anything into the folder
(:mod:`medmtl.utils.hydra_callbacks`); sweep jobs are checked again when they start, against
configuration files edited between two invocations of the same sweep command.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medmtl.errors import RunFolderConflict
from medmtl.utils.outputs import atomic_write_text

#: Top-level keys that do not change what a run computes (``speed``: the same results to rounding,
#: so a run may be resumed with other speed options).
NOT_IDENTITY = ("paths", "logger", "callbacks", "hydra", "ckpt_path", "auto_resume", "skip_finished", "speed")
#: Top-level keys added after runs were recorded, with the value that reproduces what a run did
#: before the key existed: at that value the key is left out of the digest, so that adding an option
#: does not turn every recorded run into "another configuration" (a rerun sweep would refuse them
#: all instead of skipping them); any other value changes the digest.
LATER_KEYS = {"test_weights": "best"}
IDENTITY_FILE = "identity.json"


def config_digest(cfg: DictConfig, drop_later_keys: bool = True) -> str:
    """SHA-256 (first 16 hex digits) of the resolved config minus :data:`NOT_IDENTITY` and minus the
    :data:`LATER_KEYS` at their earlier behaviour's value.

    The keys are dropped before resolving, so that the digest can be taken before Hydra has set
    up its run-time values (``${hydra:runtime.output_dir}`` lives in ``paths``)."""
    identity = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in cfg
        if key not in NOT_IDENTITY and not (drop_later_keys and key in LATER_KEYS and cfg[key] == LATER_KEYS[key])
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def earlier_digests(cfg: DictConfig) -> tuple[str, ...]:
    """Digests the same configuration was recorded under before :data:`LATER_KEYS` were left out
    (runs made while such a key was already in the config and still in the digest)."""
    every_key = config_digest(cfg, drop_later_keys=False)
    return () if every_key == config_digest(cfg) else (every_key,)


def _recorded_digest(output_dir: Path) -> str | None:
    for name in ("metrics.json", IDENTITY_FILE):
        path = output_dir / name
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict):
                raise RunFolderConflict(
                    f"{path} is not readable JSON (truncated or overwritten), so the run in {output_dir} cannot be "
                    "identified; choose a new folder, or delete that file to train there again."
                )
            return record.get("config_digest")
    return None


def check_reused_folder(output_dir: Path, digest: str, earlier: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The finished record when ``output_dir`` holds this config's ``metrics.json`` (recorded under
    ``digest`` or one of its ``earlier`` digests), else None.

    Raises :class:`RunFolderConflict` when the folder holds another configuration's run.
    """
    output_dir = Path(output_dir)
    recorded = _recorded_digest(output_dir)
    if recorded is None:
        return None
    if recorded != digest and recorded not in earlier:
        raise RunFolderConflict(
            f"The folder {output_dir} holds a run of another configuration (digest {recorded}, this one {digest}); "
            "choose a new folder, or rerun the exact command that made it. To continue that run with other "
            "settings, start a new run with ckpt_path=<its checkpoints/last.ckpt>."
        )
    if (output_dir / "metrics.json").is_file():
        return json.loads((output_dir / "metrics.json").read_text())
    return None


def record_identity(output_dir: Path, digest: str) -> None:
    atomic_write_text(Path(output_dir) / IDENTITY_FILE, json.dumps({"config_digest": digest}) + "\n")
