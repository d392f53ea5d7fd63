"""The sbatch file a SLURM sweep submits, written without a cluster (``src/slurm_preview.py``).

``hydra/launcher=slurm`` (one GPU per job) and ``hydra/launcher=slurm_ddp`` (one data-parallel run
per job: ``trainer.devices`` tasks and GPUs on each of ``trainer.num_nodes`` nodes) submit through
hydra-submitit-launcher, which hands its settings to submitit's SLURM executor. That executor
refuses to exist where ``srun`` does not, so this module turns the same settings into the
executor's sbatch parameters with submitit's own renaming (``timeout_min`` -> ``--time``,
``mem_gb`` -> ``--mem``, ``tasks_per_node`` -> ``--ntasks-per-node``, ...) and asks submitit's own
writer for the file. In the job, ``srun`` starts every task; each runs the Hydra job,
and Lightning's SLURM environment gives it its rank (``SLURM_PROCID``), the node list and the
master port, so Lightning starts no process of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medmtl.errors import ConfigError

#: settings of the launcher itself, not of sbatch
LAUNCHER_ONLY = ("_target_", "submitit_folder", "max_num_timeout")


#: launcher settings that count something: whole numbers >= 1 when set
COUNTS = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "timeout_min", "array_parallelism")


def check_launcher(launcher: Mapping[str, Any]) -> None:
    """One sentence for a count that sbatch would be handed as 0, -1 or "two" (``--nodes=-1``)."""
    for key in COUNTS:
        value = launcher.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            source = {
                "nodes": " (trainer.num_nodes)",
                "tasks_per_node": " (trainer.devices)",
                "gpus_per_node": " (trainer.devices)",
            }
            raise ConfigError(f"hydra.launcher.{key}{source.get(key, '')} must be a whole number >= 1, got {value!r}.")
    mem = launcher.get("mem_gb")
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem <= 0):
        raise ConfigError(f"hydra.launcher.mem_gb must be a positive number, got {mem!r}.")


def sbatch_parameters(launcher: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of submitit's sbatch writer for the launcher settings ``launcher``."""
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem

    check_launcher(launcher)

    renamed: dict[str, str] = {str(k): str(v) for k, v in (SlurmExecutor._equivalence_dict() or {}).items()}
    parameters: dict[str, Any] = {renamed.get(k, k): v for k, v in launcher.items() if k not in LAUNCHER_ONLY and v is not None}
    if "mem" in parameters:
        parameters["mem"] = _convert_mem(parameters["mem"])
    return parameters


def sbatch_script(launcher: Mapping[str, Any], command: str = "python -u -m submitit.core._submit {folder}") -> str:
    """The sbatch file of one job with the launcher settings ``launcher`` (a resolved
    ``hydra.launcher``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        raise ConfigError("the SLURM preview needs hydra/launcher=slurm or hydra/launcher=slurm_ddp.")
    folder = str(launcher["submitit_folder"])
    return _make_sbatch_string(command=command.format(folder=folder), folder=folder, **sbatch_parameters(launcher))
