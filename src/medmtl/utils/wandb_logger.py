"""W&B, opt-in, never interactive and never blocking.

Mode ``auto`` (the default of ``logger=wandb``): online when an API key is configured
(``WANDB_API_KEY`` or a ``~/.netrc`` entry for api.wandb.ai), offline otherwise; the run can be
synced later with ``wandb sync``. ``online`` without a key falls back to offline with a warning
instead of prompting. Before going online, the server (``WANDB_BASE_URL``, default
https://api.wandb.ai) must accept a TCP connection within ``connect_timeout`` seconds (3);
otherwise the run logs offline with one warning that prints the ``wandb sync`` command, instead of
``wandb.init`` blocking for minutes and then crashing the run. The run is finished at the end of
each job (see ``medmtl.run``), so that in-process sweeps never reuse a run.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from medmtl.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_SERVER = "https://api.wandb.ai"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def server_reachable(url: str, timeout: float) -> bool:
    """Whether ``url``'s host accepts a TCP connection within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(mode: str, save_dir: str | os.PathLike = ".", connect_timeout: float = 3.0) -> str:
    if mode not in MODES:
        raise ConfigError(f"logger.wandb.mode must be one of {MODES}, got {mode!r}.")
    if mode == "auto":
        mode = "online" if has_api_key() else "offline"
    elif mode == "online" and not has_api_key():
        log.warning("W&B mode 'online' but no API key (WANDB_API_KEY or ~/.netrc): logging offline instead.")
        return "offline"
    if mode == "online":
        server = os.environ.get("WANDB_BASE_URL", DEFAULT_SERVER)
        if not server_reachable(server, connect_timeout):
            log.warning(
                "W&B server %s not reachable within %g s: logging offline; sync later with `wandb sync %s`.",
                server,
                connect_timeout,
                Path(save_dir) / "wandb" / "offline-run-*",
            )
            return "offline"
    return mode


def wandb_logger(mode: str = "auto", connect_timeout: float = 3.0, **kwargs):
    """A Lightning ``WandbLogger`` in a mode that never prompts and never waits on the network."""
    from lightning.pytorch.loggers import WandbLogger

    save_dir = kwargs.get("save_dir", ".")
    resolved = resolve_mode(mode, save_dir, connect_timeout)
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(mode=resolved, **kwargs)
