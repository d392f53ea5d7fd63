"""W&B, opt-in and never interactive.

Mode ``auto`` (the default of ``logger=wandb``): online when an API key is configured
(``WANDB_API_KEY`` or a ``~/.netrc`` entry for api.wandb.ai), offline otherwise; the run can be
synced later with ``wandb sync``. ``online`` without a key falls back to offline with a warning
instead of prompting. The run is finished at the end of each job (see ``medmtl.run``), so that
in-process sweeps never reuse a run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medmtl.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"logger.wandb.mode must be one of {MODES}, got {mode!r}.")
    if mode == "auto":
        return "online" if has_api_key() else "offline"
    if mode == "online" and not has_api_key():
        log.warning("W&B mode 'online' but no API key (WANDB_API_KEY or ~/.netrc): logging offline instead.")
        return "offline"
    return mode


def wandb_logger(mode: str = "auto", **kwargs):
    """A Lightning ``WandbLogger`` in a mode that never prompts."""
    from lightning.pytorch.loggers import WandbLogger

    resolved = resolve_mode(mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(kwargs.get("save_dir", ".")).mkdir(parents=True, exist_ok=True)
    return WandbLogger(mode=resolved, **kwargs)
