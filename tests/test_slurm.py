"""The SLURM submission of a data-parallel run, checked without a cluster: the sbatch file that
``hydra/launcher=slurm_ddp`` submits (written by submitit's own writer) asks for the nodes, the
tasks and GPUs per node the trainer will use, and starts every task through srun."""

import re

import pytest
from omegaconf import OmegaConf

from helpers import compose_train, run
from medmtl.slurm import sbatch_script


def sbatch_of(overrides, tmp_path) -> str:
    cfg = compose_train(overrides + [f"paths.log_dir={tmp_path}"])
    return sbatch_script(OmegaConf.to_container(cfg.hydra.launcher, resolve=True))


def directive(script: str, name: str) -> str:
    found = re.findall(rf"^#SBATCH --{name}=(\S+)$", script, flags=re.M)
    assert len(found) == 1, f"--{name} appears {len(found)} times"
    return found[0]


def test_a_two_node_ddp_job_asks_for_one_task_and_gpu_per_device_on_each_node(tmp_path):
    script = sbatch_of(
        ["hydra/launcher=slurm_ddp", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.partition=gpu"],
        tmp_path,
    )
    assert directive(script, "nodes") == "2"
    assert directive(script, "ntasks-per-node") == "4"
    assert directive(script, "gpus-per-node") == "4"
    assert directive(script, "partition") == "gpu"
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and "submitit.core._submit" in srun[0]  # every task runs the job; Lightning reads SLURM_PROCID


def test_the_one_gpu_launcher_asks_for_one_task_on_one_node(tmp_path):
    script = sbatch_of(["hydra/launcher=slurm"], tmp_path)
    assert directive(script, "nodes") == "1"
    assert directive(script, "ntasks-per-node") == "1"
    assert directive(script, "gpus-per-node") == "1"
    assert directive(script, "mem") == "32GB"


def test_the_preview_script_prints_the_file_for_a_users_overrides(tmp_path):
    result = run("slurm_preview.py", ["hydra/launcher=slurm_ddp", "trainer=ddp", "trainer.devices=8"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert directive(result.stdout, "ntasks-per-node") == "8" and directive(result.stdout, "nodes") == "1"


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.num_nodes=-1", r"hydra.launcher.nodes \(trainer.num_nodes\) must be a whole number >= 1, got -1"),
        ("trainer.devices=0", r"hydra.launcher.tasks_per_node \(trainer.devices\) must be a whole number >= 1, got 0"),
        ("hydra.launcher.array_parallelism=0", r"hydra.launcher.array_parallelism must be a whole number >= 1, got 0"),
        ("hydra.launcher.timeout_min=0", r"hydra.launcher.timeout_min must be a whole number >= 1, got 0"),
        ("hydra.launcher.mem_gb=-8", r"hydra.launcher.mem_gb must be a positive number, got -8"),
    ],
)
def test_a_count_sbatch_cannot_take_is_one_sentence(override, message, tmp_path):
    from medmtl.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        sbatch_of(["hydra/launcher=slurm_ddp", "trainer=ddp", override], tmp_path)


def test_the_preview_script_ends_bad_input_in_one_sentence_with_exit_2(tmp_path):
    """A bad count, an override Hydra cannot compose, no SLURM launcher: exit 2, no traceback."""
    for overrides, message in (
        (["hydra/launcher=slurm_ddp", "trainer=ddp", "trainer.num_nodes=-1"], "must be a whole number >= 1, got -1"),
        (["hydra/launcher=slurm_ddp", "trainer.nodez=2"], "Could not override 'trainer.nodez'"),
        (["trainer=ddp"], "needs hydra/launcher=slurm or hydra/launcher=slurm_ddp"),
    ):
        result = run("slurm_preview.py", overrides, tmp_path)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
