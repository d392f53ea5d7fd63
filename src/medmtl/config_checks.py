"""Configuration values checked once, when a run starts, before anything is built.

Hydra checks that an option exists; it cannot know that ``data.batch_size=0`` or
``optim.optimizer.lr=fast`` is meaningless, and without this pass those end deep in PyTorch,
OpenCV or scikit-learn as a traceback. Every rule below names the key, what it must be and what it
got, in one sentence (a :class:`~medmtl.errors.ConfigError`: exit code 2, a ``failure.json``).
A rule applies to whichever data, model or optimizer config has the key, so a new dataset that
reuses a key name is covered by it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from medmtl.errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _non_negative_int(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _positive_number(value: Any) -> bool:
    return _number(value) and value > 0


def _non_negative_number(value: Any) -> bool:
    return _number(value) and value >= 0


def _positive_size(value: Any) -> bool:
    """A side length, or a (height, width) pair, of positive integers."""
    if _positive_int(value):
        return True
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_positive_int(v) for v in value)


def _size_pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and _positive_size(value)


#: (key, test, what it must be); a key absent from the config is not checked
RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.batch_size", _positive_int, "a positive integer"),
    ("data.eval_batch_size", _positive_int, "a positive integer"),
    ("data.batch_size_3d", lambda v: v is None or _positive_int(v), "a positive integer (or null: data.batch_size)"),
    ("data.num_workers", _non_negative_int, "a whole number >= 0"),
    ("data.image_size", _positive_size, "a positive integer (or a [height, width] pair)"),
    ("data.resolution", _positive_size, "a [height, width] pair of positive integers"),
    ("data.n_folds", lambda v: _is_int(v) and v >= 2, "an integer >= 2 (cross-validation needs two folds or more)"),
    ("data.val_size", _non_negative_int, "a whole number >= 0"),
    ("model.num_experts", _positive_int, "an integer >= 1"),
    ("model.task_experts", _non_negative_int, "a whole number >= 0"),
    ("model.num_nonzeros", _positive_int, "an integer >= 1"),
    ("model.gamma", _positive_number, "a positive number"),
    ("model.entropy_weight", _non_negative_number, "a number >= 0"),
    ("model.gate", lambda v: v in ("softmax", "dselect_k"), "softmax or dselect_k"),
    ("model.gate_input_size", _size_pair, "a [height, width] pair of positive integers"),
    ("model.epochs", _positive_int, "an integer >= 1 (the run's max_epochs)"),
    ("model.eval_branching", lambda v: v in ("argmax", "sample"), "argmax or sample"),
    ("optim.strategy.temperature", _positive_number, "a positive number"),
    ("optim.strategy.inner_lr", _positive_number, "a positive number"),
    ("optim.strategy.outer_lr", _positive_number, "a positive number"),
    ("optim.strategy.inner_steps", _positive_int, "an integer >= 1"),
    ("optim.strategy.phi", _positive_number, "a positive number"),
    ("optim.strategy.num_groups", _positive_int, "an integer >= 1"),
    ("optim.strategy.ntk_exp", _positive_number, "a positive number"),
    ("optim.strategy.chunks", _positive_int, "an integer >= 1"),
    ("optim.strategy.lamb", _non_negative_number, "a number >= 0"),
    ("optim.strategy.weighting", lambda v: v in ("router", "free"), "router or free"),
    (
        "optim.strategy.normalisation",
        lambda v: v in ("initial_ratio", "initial_log", "none"),
        "initial_ratio, initial_log or none",
    ),
    ("optim.strategy.weight_sum", lambda v: v in ("differentiable", "detached", "none"), "differentiable, detached or none"),
    (
        "optim.strategy.clamp",
        lambda v: isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v) and 0 <= v[0] < v[1] <= 1,
        "[low, high] with 0 <= low < high <= 1",
    ),
    ("optim.strategy.robust_step_size", _positive_number, "a positive number"),
    ("optim.strategy.affinity_decay", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("optim.strategy.warmup_iterations", _non_negative_int, "a whole number >= 0"),
    ("optim.strategy.credit", lambda v: v in ("authors_code", "own_step"), "authors_code or own_step"),
    ("optim.strategy.prior_variance", _positive_number, "a positive number"),
    ("optim.strategy.mc_samples", lambda v: _is_int(v) and v >= 2, "an integer >= 2 (a variance needs two draws)"),
    ("optim.strategy.variance_power", _non_negative_number, "a number >= 0"),
    ("optim.strategy.warmup_epochs", _positive_int, "an integer >= 1 (the first full-data posterior needs an epoch's features)"),
    ("optim.strategy.head_clip", _non_negative_number, "a number >= 0 (0: no clipping)"),
    ("optim.strategy.shared_clip", _non_negative_number, "a number >= 0 (0: no clipping)"),
    ("model.head", lambda v: v in ("mlp", "linear"), "mlp or linear"),
    ("data.dimensions_loss", lambda v: v in ("l1", "squared_error"), "l1 or squared_error"),
    ("optim.strategy.regression_variance_power", _non_negative_number, "a number >= 0"),
    ("optim.optimizer.lr", _positive_number, "a positive number"),
    ("optim.optimizer.weight_decay", _non_negative_number, "a number >= 0"),
    ("optim.optimizer.momentum", _non_negative_number, "a number >= 0"),
    ("trainer.max_epochs", lambda v: _positive_int(v) or v == -1, "a positive integer (or -1: no epoch limit)"),
    ("seed", _is_int, "an integer"),
    ("test_weights", lambda v: v in ("best", "last"), "best or last"),
)


def _lookup(cfg: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _plain(value: Any) -> Any:
    """OmegaConf lists as Python lists (the rules test plain values)."""
    from omegaconf import ListConfig

    return list(value) if isinstance(value, ListConfig) else value


def check_config(cfg: Mapping[str, Any]) -> None:
    """Raise one sentence for the first value that breaks a rule of :data:`RULES`, and for a CV
    fold outside ``0 .. n_folds - 1``."""
    for key, test, wanted in RULES:
        present, value = _lookup(cfg, key)
        if present and value is not None and not test(_plain(value)):
            raise ConfigError(f"{key} must be {wanted}, got {value!r}.")
    _check_linear_readout(cfg)
    has_folds, n_folds = _lookup(cfg, "data.n_folds")
    has_fold, fold = _lookup(cfg, "data.fold")
    if has_folds and has_fold and fold is not None and not (_is_int(fold) and 0 <= fold < n_folds):
        raise ConfigError(f"data.fold must be in [0, {n_folds - 1}], got {fold!r}.")


#: the networks whose heads are one linear layer on a shared vector, and the option that makes them so
LINEAR_READOUT_MODELS: dict[str, tuple[str, str] | None] = {
    "medmtl.models.emotic_2enc.EmoticTwoEncoder": None,
    "medmtl.models.multi_lenet.MultiLeNet": ("head", "linear"),
}


def _check_linear_readout(cfg: Mapping[str, Any]) -> None:
    """A strategy that needs one linear head per task on a shared vector (BayesAgg-MTL) with a
    network that has none: one sentence before any data is read."""
    has_target, target = _lookup(cfg, "optim.strategy._target_")
    has_model, model = _lookup(cfg, "model._target_")
    if not (has_target and has_model):
        return
    from hydra.utils import get_class

    if not getattr(get_class(str(target)), "needs_linear_readout", False):
        return
    known = str(model) in LINEAR_READOUT_MODELS
    option = LINEAR_READOUT_MODELS.get(str(model))
    if known and (option is None or _lookup(cfg, f"model.{option[0]}")[1] == option[1]):
        return
    _, name = _lookup(cfg, "optim.name")
    raise ConfigError(
        f"optim={name} needs every task's head to be one linear layer on a shared vector: use model=emotic_2enc "
        f"or model=multi_lenet model.head=linear (got model {str(model).rsplit('.', 1)[-1]})."
    )


def check_precision_device(precision: Any, accelerator: Any, cuda_available: bool) -> None:
    """``16-mixed`` (float16 with a gradient scaler) runs on CUDA only: on a CPU Lightning would run
    bf16 instead while the saved configuration says 16-mixed, and the strategies the scaler cannot
    serve would not be refused. One sentence instead."""
    on_cpu = str(accelerator) == "cpu" or (str(accelerator) == "auto" and not cuda_available)
    if str(precision).startswith("16") and on_cpu:
        raise ConfigError(
            f"trainer.precision={precision} needs a CUDA device (float16 with a gradient scaler); on a CPU use "
            "trainer.precision=bf16-mixed, which Lightning would otherwise run in its place without saying so."
        )


__all__ = ["RULES", "check_config", "check_precision_device"]


_INTERVAL = re.compile(
    r"^\s*(?:tag\(\s*(?P<tags>[\w\s,]*?)\s*,\s*)?interval\(\s*(?P<low>[^,]+?)\s*,\s*(?P<high>[^)]+?)\s*\)\s*\)?\s*$"
)


def check_search_space(params: Mapping[str, Any], n_trials: Any) -> None:
    """A tuning search (``experiment=tune``, Hydra's Optuna sweeper) that could not search: a budget
    below one trial, an ``interval(low, high)`` with low >= high, or a ``log`` interval reaching 0 or
    below (Optuna samples log-uniformly and cannot start at 0). One sentence naming the key."""
    if not _positive_int(n_trials):
        raise ConfigError(f"hydra.sweeper.n_trials must be a whole number of trials >= 1, got {n_trials!r}.")
    for key, value in params.items():
        match = _INTERVAL.match(str(value))
        if match is None:
            continue  # choice(...), range(...) and fixed values: Hydra's own parser judges them
        try:
            low, high = float(match["low"]), float(match["high"])
        except ValueError:
            raise ConfigError(f"hydra.sweeper.params.{key}: the bounds of {value} are not numbers.") from None
        if not low < high:
            raise ConfigError(f"hydra.sweeper.params.{key}: {value} has low >= high; write interval(low, high) with low < high.")
        if "log" in (match["tags"] or "") and low <= 0:
            raise ConfigError(f"hydra.sweeper.params.{key}: {value} is searched on a log scale and must start above 0.")
