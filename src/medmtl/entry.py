"""Environment set-up shared by the entry points, done before heavy imports.

``.env`` is loaded first so that ``HF_HUB_OFFLINE``, ``TORCH_HOME`` and the data paths are in the
environment before timm / huggingface_hub are imported (they read them at import time).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def prepare_environment() -> None:
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env_file = Path(os.environ["PROJECT_ROOT"]) / ".env"
    if env_file.is_file():
        from dotenv import load_dotenv

        load_dotenv(env_file, override=False)


def run_reporting_user_errors(function: Callable, cfg) -> object:
    """Run ``function(cfg)``; a missing dataset or weights file ends the job with one sentence."""
    from medmtl.run import USER_ERRORS

    try:
        return function(cfg)
    except USER_ERRORS as error:
        logging.getLogger("medmtl").error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
