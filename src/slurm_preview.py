"""Print the sbatch file that a SLURM sweep would submit, without a cluster.

    python src/slurm_preview.py hydra/launcher=slurm_ddp trainer=ddp trainer.devices=4 trainer.num_nodes=2 \
        hydra.launcher.partition=gpu

The overrides are those of the ``python src/train.py -m ...`` command (medmtl.slurm).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medmtl.entry import prepare_environment

prepare_environment()


def main(overrides: list[str]) -> None:
    from omegaconf import OmegaConf

    from medmtl.catalogue import compose_train
    from medmtl.slurm import sbatch_script

    cfg = compose_train(overrides)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    print(sbatch_script(launcher))  # type: ignore[arg-type]  # a mapping: the launcher is a config group


if __name__ == "__main__":
    from hydra.errors import HydraException

    from medmtl.errors import ConfigError

    try:
        main(sys.argv[1:])
    except (ConfigError, HydraException) as error:  # a bad value or an override Hydra cannot compose: exit 2
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        raise SystemExit(2) from None
