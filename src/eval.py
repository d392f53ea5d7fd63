"""Test a checkpoint: ``python src/eval.py ckpt_path=<run>/checkpoints/<name>.ckpt [overrides]``.

The model, tasks and data are rebuilt from the run that wrote the checkpoint (its
``config_resolved.yaml`` and ``.hydra/overrides.yaml``); overrides on the command line change
them, e.g. another data root (``data.root=...``) or the real dataset (``data=refuge``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medmtl.entry import exit_code_of_hydra_errors, prepare_environment

prepare_environment()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from medmtl.entry import run_job
    from medmtl.run import evaluate, in_sweep, save_config

    save_config(cfg)
    run_job(evaluate, cfg, in_sweep=in_sweep())


if __name__ == "__main__":
    from medmtl.run import evaluation_arguments

    sys.argv = sys.argv[:1] + evaluation_arguments(sys.argv[1:])
    with exit_code_of_hydra_errors():
        main()
