"""Train one model with one strategy on one dataset: ``python src/train.py model=... optim=... data=...``.

Hydra composes ``conf/train.yaml``; ``-m`` runs sweeps. Each run writes its resolved config, a CSV
log, checkpoints, ``metrics.json`` and ``predictions.npz`` into its own folder under ``logs/``; a
run stopped by a configuration or data error (exit code 2) or by non-finite values (exit code 3)
writes ``failure.json`` with the sentence it printed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the package, also without `pip install -e`

from medmtl.entry import exit_code_of_hydra_errors, prepare_environment

prepare_environment()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from medmtl.entry import run_job
    from medmtl.run import in_sweep, objective, save_config, train

    save_config(cfg)
    record = run_job(train, cfg, in_sweep=in_sweep())
    return objective(record, cfg.get("optimized_metric"), cfg.get("optimized_split", "test"))


if __name__ == "__main__":
    with exit_code_of_hydra_errors():
        main()
