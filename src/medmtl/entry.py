"""What the entry points (``src/train.py``, ``src/eval.py``) share, done before heavy imports.

- ``.env`` is loaded first, so that ``HF_HUB_OFFLINE``, ``TORCH_HOME`` and the data paths are in
  the environment before timm / huggingface_hub are imported (they read them at import time).
- :func:`run_job` runs one job and turns a :class:`~medmtl.errors.UserError` (also when Hydra's
  instantiation or a DataLoader worker wrapped it) into one sentence on stderr, a ``failure.json``
  record in the run folder (``src/report.py`` names it) and the error's exit code. In a sweep the
  job returns instead, so that the other jobs still run; the sweep's end says what failed
  (:mod:`medmtl.utils.hydra_callbacks`). ``HYDRA_FULL_ERROR=1`` re-raises with the traceback.
- :func:`exit_code_of_hydra_errors` gives Hydra's own composition errors (an unknown option, a
  malformed override: already one sentence) the exit code of every other user error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FAILURE_FILE = "failure.json"
#: another DDP rank's failure, handed to rank 0 (:func:`_run_other_rank`)
RANK_FAILURE_GLOB = "failure.rank*.json"

log = logging.getLogger("medmtl")


def prepare_environment() -> None:
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env_file = Path(os.environ["PROJECT_ROOT"]) / ".env"
    if env_file.is_file():
        from dotenv import load_dotenv

        load_dotenv(env_file, override=False)


def full_errors_wanted() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def write_failure(output_dir: Path, kind: str, message: str, exit_code: int) -> None:
    """``failure.json``: what stopped the run, for the report and for whoever opens the folder."""
    from medmtl.utils.outputs import atomic_write_text

    record = {
        "status": "failed",
        "kind": kind,
        "message": message,
        "exit_code": exit_code,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(Path(output_dir) / FAILURE_FILE, json.dumps(record, indent=2) + "\n")


def read_failure(output_dir: Path) -> dict | None:
    path = Path(output_dir) / FAILURE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_job(function: Callable, cfg, in_sweep: bool) -> object:
    """``function(cfg)`` with the error handling of the module docstring."""
    from medmtl.errors import find_user_error, one_sentence
    from medmtl.lightning_ddp import is_primary_process

    output_dir = Path(cfg.paths.output_dir)
    if not is_primary_process():
        return _run_other_rank(function, cfg, output_dir)
    (output_dir / FAILURE_FILE).unlink(missing_ok=True)  # a rerun that succeeds leaves no stale record
    for stale in output_dir.glob(RANK_FAILURE_GLOB):
        stale.unlink(missing_ok=True)
    try:
        return function(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            other = _other_rank_failure(output_dir) if _several_processes(cfg) else None
            if other is not None:  # this rank saw only the broken connection; the cause is the other rank's
                _end_with(
                    other["kind"], f"rank {other['rank']}: {other['message']}", other["exit_code"], output_dir, in_sweep, error
                )
                return None
            write_failure(output_dir, "crash", f"{type(error).__name__}: {one_sentence(error)}", 1)  # a bug: traceback kept
            raise
        _end_with(user_error.kind, one_sentence(user_error), user_error.exit_code, output_dir, in_sweep, error)
        return None


def _end_with(kind: str, message: str, exit_code: int, output_dir: Path, in_sweep: bool, error: Exception) -> None:
    """Rank 0's end of a failed run: ``failure.json``, one sentence, then the exit code -- or, in a
    sweep, a return (the job's value is None); a crash of another rank keeps this rank's traceback."""
    write_failure(output_dir, kind, message, exit_code)
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    if full_errors_wanted() or kind == "crash":
        raise error
    if in_sweep:
        return None
    raise SystemExit(exit_code) from None


def _run_other_rank(function: Callable, cfg, output_dir: Path) -> object:
    """A DDP rank other than 0: the folder's records are rank 0's, so a failure is handed to rank 0
    in ``failure.rank<r>.json`` (rank 0 reports it when it sees only the broken connection). A user
    error ends this rank quietly with its exit code: rank 0 states it once; a crash keeps its traceback."""
    from medmtl.distributed import data_parallel_rank
    from medmtl.errors import find_user_error, one_sentence

    try:
        return function(cfg)
    except Exception as error:
        rank = int(os.environ.get("RANK", data_parallel_rank()[0]))
        user_error = find_user_error(error)
        kind, code = (user_error.kind, user_error.exit_code) if user_error else ("crash", 1)
        message = one_sentence(user_error) if user_error else f"{type(error).__name__}: {one_sentence(error)}"
        from medmtl.utils.outputs import atomic_write_text

        record = {"rank": rank, "kind": kind, "message": message, "exit_code": code}
        atomic_write_text(output_dir / f"failure.rank{rank}.json", json.dumps(record) + "\n")
        if user_error is None or full_errors_wanted():
            raise
        log.debug("rank %d stopped: %s", rank, message)
        raise SystemExit(code) from None


def _several_processes(cfg) -> bool:
    """Whether the run was configured for more than one process (``trainer.devices`` x ``num_nodes``;
    a device string such as ``auto`` may mean several)."""
    trainer = cfg.get("trainer") or {}
    devices, nodes = trainer.get("devices", 1), int(trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, str):
        return True
    count = devices if isinstance(devices, int) else len(devices)
    return count * nodes > 1


def _other_rank_failure(output_dir: Path, wait_seconds: float = 5.0) -> dict | None:
    """The record another rank left (:func:`_run_other_rank`), waiting briefly for it to be written."""
    deadline = time.monotonic() + wait_seconds
    while True:
        records = sorted(output_dir.glob(RANK_FAILURE_GLOB))
        if records:
            return json.loads(records[0].read_text())
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


@contextlib.contextmanager
def exit_code_of_hydra_errors() -> Iterator[None]:
    """Around ``@hydra.main``: Hydra prints its composition errors in one sentence and exits 1;
    they are configuration errors, so the exit code becomes 2. The exception Hydra handled is the
    ``SystemExit``'s context (it exits from inside its ``except`` block)."""
    from hydra.errors import CompactHydraException

    from medmtl.errors import USER_ERROR_EXIT

    try:
        yield
    except SystemExit as exit_:
        if exit_.code == 1 and isinstance(exit_.__context__, CompactHydraException):
            raise SystemExit(USER_ERROR_EXIT) from None
        raise
