"""What the configuration offers, discovered from ``conf/``: a new ``src/medmtl/conf/optim/<name>.yaml`` is a
new strategy for the benchmarks, the checks and the tests, with nothing else to edit.

- :func:`options`: the entries of a config group (files starting with ``_`` are partial bases).
- :func:`strategy_names`: every strategy (``optim=<name>``).
- :func:`needs_linear_readout`: whether a strategy trains only networks whose heads are one linear
  layer on a shared vector (BayesAgg-MTL), so that a test over every strategy on another network
  leaves it to its own networks.
- :func:`strategy_profile`: what a strategy is, read from its composed config and its class:
  whether it combines task gradients (and in which ``mode``), needs the Jacobian itself, or trains
  one network per task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: the groups shipped in the package (the strategies: ``optim``), found by Hydra through its search path
PACKAGE_CONF_DIR = Path(__file__).resolve().parent / "conf"


def options(group: str) -> list[str]:
    folders = (CONF_DIR / group, PACKAGE_CONF_DIR / group)
    return sorted({p.stem for folder in folders for p in folder.glob("*.yaml") if not p.stem.startswith("_")})


def strategy_names() -> list[str]:
    return options("optim")


def needs_linear_readout(name: str) -> bool:
    """Whether ``optim=<name>``'s class declares ``needs_linear_readout`` (read from its
    ``strategy._target_`` without building it)."""
    import yaml
    from hydra.utils import get_class

    own = (yaml.safe_load((PACKAGE_CONF_DIR / "optim" / f"{name}.yaml").read_text()) or {}).get("strategy") or {}
    target = own.get("_target_") or compose_train([f"optim={name}"]).optim.strategy._target_  # inherited
    return bool(getattr(get_class(target), "needs_linear_readout", False))


def compose_train(overrides: list[str]):
    """The training config for ``overrides``, composed as ``src/train.py`` would (no run)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@dataclass(frozen=True)
class StrategyProfile:
    name: str
    #: the strategy class
    kind: type
    #: ``jacobian`` | ``gramian`` | ``representation`` for gradient combinations, else None
    mode: str | None
    #: needs the Jacobian itself (no Gramian-only mode)
    needs_jacobian: bool
    #: one network per task (``stl``)
    separate_networks: bool
    #: weights from the Jacobians of the batch's two halves (MoDo, SDMGrad)
    double_sampling: bool = False

    @property
    def combines_gradients(self) -> bool:
        return self.mode is not None


def strategy_profile(name: str) -> StrategyProfile:
    from hydra.utils import instantiate

    from medmtl.strategies.gradient_combination import GradientCombination

    strategy = instantiate(compose_train([f"optim={name}"]).optim.strategy)
    combines = isinstance(strategy, GradientCombination)
    return StrategyProfile(
        name,
        type(strategy),
        strategy.mode if combines else None,
        bool(getattr(strategy, "needs_jacobian", False)),
        bool(strategy.separate_networks),
        getattr(strategy, "reads", None) == "cross",
    )
