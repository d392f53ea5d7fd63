"""Hydra callbacks that guard run and sweep folders before Hydra writes into them.

Hydra writes ``.hydra/config.yaml`` and ``overrides.yaml`` into a run folder before the job
starts; a check inside the job would come after another configuration's record was overwritten.
So the checks run in Hydra's ``on_run_start`` / ``on_multirun_start``:

- a single run's folder: refused when it holds a run of another configuration
  (:mod:`medmtl.utils.run_identity`) or when another process holds its lock
  (:mod:`medmtl.utils.folder_lock`); the lock is then held until the process ends;
- a sweep folder: refused when an earlier sweep with other command-line overrides made it (the
  same command completes an interrupted sweep) or when another process holds its lock.

A refusal prints one sentence and exits with code 2, writing nothing into the folder. At the end
of a sweep, :meth:`FolderGuard.on_multirun_end` lists the jobs that failed (their ``failure.json``)
and exits with the lowest of their exit codes (1 = a crash, 2 = a user error, 3 = non-finite
values), so that a script running the sweep sees that it is incomplete. A tuning sweep
(``experiment=tune``) whose only failures are diverged trials (non-finite values) and that has
trials left to choose from is a finished search: those trials are listed, and it exits with 0; a
search none of whose trials completed lists them and exits the same way, after its last trial.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from medmtl.errors import NonFiniteError, RunFolderConflict, UserError
from medmtl.utils import folder_lock
from medmtl.utils.run_identity import check_reused_folder, config_digest, earlier_digests


def _refuse(error: UserError) -> None:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(error.exit_code)


def _task_overrides(multirun_yaml: Path) -> list[str] | None:
    saved = OmegaConf.load(multirun_yaml)
    overrides = OmegaConf.select(saved, "hydra.overrides.task")
    return None if overrides is None else [str(o) for o in overrides]


class FolderGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from medmtl.lightning_ddp import is_primary_process

        if not is_primary_process():  # a DDP rank that Lightning started in rank 0's run folder
            return
        run_dir = Path(str(config.hydra.run.dir))
        with (
            read_write(config.hydra.runtime),
            open_dict(config.hydra.runtime),
        ):  # what Hydra sets next; the digest resolves paths from it
            config.hydra.runtime.output_dir = str(run_dir.absolute())
        HydraConfig.instance().set_config(config)
        try:
            if run_dir.is_dir():
                check_reused_folder(run_dir, config_digest(config), earlier_digests(config))
            folder_lock.acquire(run_dir, "run folder")
        except UserError as error:
            _refuse(error)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        from medmtl.lightning_ddp import is_primary_process

        if is_primary_process():
            folder_lock.release(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            saved = sweep_dir / "multirun.yaml"
            current = [str(o) for o in config.hydra.overrides.task]
            if saved.is_file():
                earlier = _task_overrides(saved)
                if earlier is not None and sorted(earlier) != sorted(current):
                    raise RunFolderConflict(
                        f"The sweep folder {sweep_dir} was made by another sweep ({' '.join(earlier)}); rerun that "
                        "command to complete it, or choose a new hydra.sweep.dir."
                    )
            folder_lock.acquire(sweep_dir, "sweep folder")
        except UserError as error:
            _refuse(error)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        folder_lock.release(sweep_dir)
        jobs = sorted(p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml"))
        failures = []
        for job in jobs:
            path = job / "failure.json"
            if path.is_file():
                failures.append((job, json.loads(path.read_text())))
        if not failures:
            return
        if _is_tuning(config):
            diverged = [(job, record) for job, record in failures if record.get("kind") == NonFiniteError.kind]
            if diverged and len(diverged) == len(failures) < len(jobs):
                # a search over learning rates is expected to meet some that diverge: Optuna recorded
                # those trials as failed and chose among the others
                print(f"note: {len(diverged)} of {len(jobs)} trials of {sweep_dir} diverged:", file=sys.stderr)
                for job, record in diverged:
                    print(f"  {job.relative_to(sweep_dir)}: {record.get('message')}", file=sys.stderr)
                return
        _exit_listing_failures(sweep_dir, failures, f"{len(failures)} of {len(jobs)} jobs")


def _exit_listing_failures(sweep_dir: Path, failures: list[tuple[Path, dict]], what: str) -> None:
    """One line per failed job (its ``failure.json``), then exit with the lowest of their codes."""
    print(f"error: {what} of {sweep_dir} failed:", file=sys.stderr)
    for job, record in failures:
        print(f"  {job.relative_to(sweep_dir)}: {record.get('kind')}: {record.get('message')}", file=sys.stderr)
    raise SystemExit(min(int(record.get("exit_code", 1)) for _, record in failures))


def _is_tuning(config: DictConfig) -> bool:
    """Whether the sweep is a hyperparameter search (``experiment=tune``: Hydra's Optuna sweeper)."""
    target = OmegaConf.select(config, "hydra.sweeper._target_", default="") or ""
    return "optuna" in str(target).lower()


class TuningRecord(Callback):
    """``experiment=tune``: writes ``tuning.yaml`` into the sweep folder before the first trial --
    the method, the objective (split, metric, direction), the budget, the sampler and its seed, the
    search space -- so that the report states how every method was tuned."""

    #: set when a search starts (on_multirun_start); None in a sweep this callback did not start
    n_trials: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from medmtl.config_checks import check_search_space
        from medmtl.errors import ConfigError

        sweeper = config.hydra.sweeper
        try:  # before any trial; Hydra only warns about a callback's exception, so the sweep is ended here
            space = dict(OmegaConf.to_container(sweeper.params or {}))  # type: ignore[arg-type]
            command_line = (o.split("=", 1) for o in config.hydra.overrides.task if "=" in o)  # key=interval(...) sweeps too
            space.update({key.lstrip("+~"): value for key, value in command_line})
            check_search_space(space, sweeper.n_trials)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        record = {
            "method": config.optim.get("name"),
            "objective": {
                "split": config.get("optimized_split"),
                "metric": config.get("optimized_metric"),
                "direction": str(sweeper.direction),
            },
            "n_trials": int(sweeper.n_trials),
            "sampler": str(sweeper.sampler._target_).rsplit(".", 1)[-1],
            "sampler_seed": sweeper.sampler.get("seed"),
            "search_space": {str(k): str(v) for k, v in (sweeper.params or {}).items()},
            "data": str(config.data._target_).rsplit(".", 1)[-1],
            "fold": config.data.get("fold"),
            "seed": config.get("seed"),
        }
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "tuning.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(record)))
        self.sweep_dir, self.n_trials = sweep_dir, int(sweeper.n_trials)
        self.failed: list[tuple[Path, dict]] = []
        self.completed = 0

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        """After the last trial of a search none of whose trials completed: the failures, one line
        each, and the exit code (the sweeper would otherwise end in Optuna's "No trials are
        completed yet" traceback)."""
        if self.n_trials is None:  # not a search this callback started
            return
        output_dir = Path(str(config.hydra.runtime.output_dir))
        failure = output_dir / "failure.json"
        if failure.is_file():
            self.failed.append((output_dir, json.loads(failure.read_text())))
        else:
            self.completed += 1
        if self.completed == 0 and len(self.failed) == self.n_trials:
            _exit_listing_failures(self.sweep_dir, self.failed, f"every one of the {self.n_trials} trials")
