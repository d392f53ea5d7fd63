"""Test a checkpoint: ``python src/eval.py ckpt_path=/path/to.ckpt model=... optim=... data=...``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medmtl.entry import prepare_environment  # noqa: E402

prepare_environment()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from medmtl.entry import run_reporting_user_errors
    from medmtl.run import evaluate, save_config

    save_config(cfg)
    run_reporting_user_errors(evaluate, cfg)


if __name__ == "__main__":
    main()
