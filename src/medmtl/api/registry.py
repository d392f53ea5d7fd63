"""Strategies by name, outside Hydra: the same names, options and defaults as ``medmtl/conf/optim``.

``optim_config(name)`` reads ``medmtl/conf/optim/<name>.yaml`` with its ``defaults`` list (the shared
``_adam`` / ``_common`` files, or the strategy it extends: ``mgda_ub`` extends ``mgda``) merged as
Hydra merges them: a later file's keys replace an earlier one's, dictionaries key by key. A test
holds it equal to Hydra's composition for every strategy. ``make_strategy(name, **options)``
builds the strategy with those defaults, ``options`` replacing entries of its ``strategy:`` block.
Only PyYAML is read; Hydra and OmegaConf are not imported.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
from pathlib import Path
from typing import Any

import yaml

from medmtl.errors import ConfigError
from medmtl.strategies.base import Strategy

#: the strategy definitions, shipped in the package (the experiments' optim group reads them too)
OPTIM_DIR = Path(__file__).resolve().parents[1] / "conf" / "optim"


def strategy_names() -> list[str]:
    """Every strategy ``medmtl/conf/optim`` defines (its files not starting with ``_``)."""
    return sorted(p.stem for p in _optim_dir().glob("*.yaml") if not p.stem.startswith("_"))


def optim_config(name: str) -> dict[str, Any]:
    """The composed ``optim`` group of strategy ``name``: ``strategy``, ``optimizer``,
    ``gradient_clip_val``, ``nonfinite``, ... as plain Python values."""
    names = strategy_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else f" Known: {', '.join(names)}."
        raise ConfigError(f"No strategy {name!r}.{hint}")
    return copy.deepcopy(_compose(name))


def make_strategy(name: str, **options: Any) -> Strategy:
    """Strategy ``name`` with ``medmtl/conf/optim/<name>.yaml``'s defaults, ``options`` replacing entries
    of its ``strategy:`` block (e.g. ``make_strategy("jd_cagrad", options={"c": 0.4})``)."""
    spec = dict(optim_config(name)["strategy"])
    known = sorted(k for k in spec if not k.startswith("_"))
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"Strategy {name!r} has no option {', '.join(unknown)}; its options are {', '.join(known) or 'none'}.")
    spec.update(options)
    return build(spec)


def build(spec: dict[str, Any]) -> Any:
    """``spec["_target_"]`` called with the other entries (``_partial_: true``: a partial)."""
    spec = dict(spec)
    module_name, _, attribute = spec.pop("_target_").rpartition(".")
    target = getattr(importlib.import_module(module_name), attribute)
    partial = spec.pop("_partial_", False)
    return functools.partial(target, **spec) if partial else target(**spec)


def _optim_dir() -> Path:
    if not OPTIM_DIR.is_dir():
        raise ConfigError(
            f"The strategy definitions are not at {OPTIM_DIR}: this medmtl installation is incomplete "
            "(reinstall it: pip install medmtl, or make install in a checkout)."
        )
    return OPTIM_DIR


@functools.cache
def _compose(name: str) -> dict[str, Any]:
    own = yaml.safe_load((_optim_dir() / f"{name}.yaml").read_text()) or {}
    result: dict[str, Any] = {}
    for entry in own.pop("defaults", ["_self_"]):
        result = _merge(result, own if entry == "_self_" else _compose(entry))
    return result


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        both_dicts = isinstance(merged.get(key), dict) and isinstance(value, dict)
        merged[key] = _merge(merged[key], value) if both_dicts else value
    return merged


__all__ = ["build", "make_strategy", "optim_config", "strategy_names"]
