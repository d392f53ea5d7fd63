"""Training and evaluation runs from a composed Hydra config (called by ``src/train.py``, ``src/eval.py``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from medmtl.callbacks import IterationTimer
from medmtl.checkpoints import AtomicCheckpointIO, check_fits, check_resumes
from medmtl.config_checks import check_config, check_precision_device
from medmtl.data.preflight import check_every_sample
from medmtl.errors import ConfigError
from medmtl.lightning_ddp import is_primary_process
from medmtl.models.base import SeparateNetworks
from medmtl.module import MultiTaskModule, with_decoupled_weight_decay
from medmtl.selection import SELECTIONS, PerTaskSelection
from medmtl.utils import folder_lock
from medmtl.utils.csv_log import merge_after_resume, set_aside_before_resume
from medmtl.utils.outputs import atomic_write_text, print_summary, write_metrics_json, write_predictions
from medmtl.utils.run_identity import NOT_IDENTITY, check_reused_folder, config_digest, earlier_digests, record_identity

log = logging.getLogger(__name__)


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def _optimizer_factory(optim: DictConfig):
    factory = instantiate(optim.optimizer)
    return with_decoupled_weight_decay(factory) if optim.get("decoupled_weight_decay") else factory


def build_module(cfg: DictConfig, datamodule) -> MultiTaskModule:
    return MultiTaskModule(
        model=instantiate(cfg.model),
        strategy=instantiate(cfg.optim.strategy),
        tasks=datamodule.tasks,
        optimizer=_optimizer_factory(cfg.optim),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        gradient_clip_val=cfg.optim.get("gradient_clip_val"),
        backbone_lr_scale=cfg.optim.get("backbone_lr_scale"),
        fusion_lr_scale=cfg.optim.get("fusion_lr_scale"),
        nonfinite=cfg.optim.get("nonfinite", "stop"),
        max_consecutive_skips=cfg.optim.get("max_consecutive_skips", 10),
        input_keys=datamodule.input_keys,
        speed=cfg.get("speed"),
        strategy_name=cfg.optim.get("name"),
    )


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any], validate: bool = True) -> L.Trainer:
    """The configured Trainer, writing checkpoints atomically (:class:`AtomicCheckpointIO`);
    without a validation split (``validate=False``) the validation loop is switched off."""
    check_precision_device(cfg.trainer.get("precision"), cfg.trainer.get("accelerator", "auto"), torch.cuda.is_available())
    no_validation = {} if validate else {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()], **no_validation)


def in_sweep() -> bool:
    if not HydraConfig.initialized():
        return False
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _overrides() -> list[str]:
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


#: config groups every run chooses from; the others (an experiment's arms, e.g. nyud_arm) label runs
STANDARD_GROUPS = (
    "data",
    "model",
    "optim",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "experiment",
    "preset",
    "preset_model",
    "preset_data",
)


def _arm_choices() -> dict[str, str]:
    """The experiment-specific group choices of this run (``idrid_arm=moe``, ``nyud_arm=padnet``):
    the report tells runs apart by them when model, strategy and learning rate do not."""
    if not HydraConfig.initialized():
        return {}
    return {
        group: str(choice)
        for group, choice in HydraConfig.get().runtime.choices.items()
        if choice is not None and group not in STANDARD_GROUPS and not group.startswith("hydra")
    }


def _resolve_ckpt_path(ckpt_path: str | None, output_dir: Path, auto_resume: bool = True) -> str | None:
    """``last`` means this run folder's ``checkpoints/last.ckpt`` (when it exists). With
    ``auto_resume`` and no ``ckpt_path``, a run folder that already holds ``last.ckpt`` (the same
    ``hydra.run.dir`` reused after a crash) resumes from it, and says so."""
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path is None and auto_resume and last.is_file():
        log.info("Resuming from %s (this run folder was used before; auto_resume=false to start anew).", last)
        return str(last)
    if ckpt_path != "last":
        return ckpt_path
    if not last.is_file():
        log.warning("ckpt_path=last: %s holds no checkpoints/last.ckpt, so this run starts from scratch.", output_dir)
        return None
    return str(last)


def _csv_log_dir(loggers: list[Any]) -> Path | None:
    return next((Path(logger.log_dir) for logger in loggers if isinstance(logger, CSVLogger)), None)


def _per_task_selection(cfg: DictConfig, datamodule) -> PerTaskSelection | None:
    """``optim.model_selection``: ``per_task`` (single-task learning's default) or ``joint``."""
    selection = cfg.optim.get("model_selection", "joint")
    if selection not in SELECTIONS:
        raise ConfigError(f"optim.model_selection must be one of {SELECTIONS}, got {selection!r}.")
    if selection == "joint" or not datamodule.has_validation:
        return None
    return PerTaskSelection(Path(cfg.paths.output_dir) / "checkpoints")


def _model_selection_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The checkpoint callback that monitors a metric (the other one only keeps ``last.ckpt``)."""
    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor is not None), None)


def _test(trainer: L.Trainer, module: MultiTaskModule, datamodule, ckpt_path: str | None, output_dir: Path) -> dict[str, float]:
    """Test ``ckpt_path`` (the module's current weights when None); write ``predictions.npz``."""
    if ckpt_path:
        check_fits(ckpt_path, module.state_dict())
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if module.test_predictions is not None and is_primary_process():
        write_predictions(output_dir / "predictions.npz", module.test_predictions)
        _log_examples_to_wandb(trainer.loggers, module.test_predictions)
    return {k.removeprefix("test/"): float(v) for k, v in (results[0] if results else {}).items()}


def _validate(trainer: L.Trainer, module: MultiTaskModule, datamodule, ckpt_path: str | None) -> dict[str, float]:
    """The validation metrics of ``ckpt_path`` (the objective of tuning: the test split is never
    read). Refused without a validation split."""
    if not datamodule.has_validation:
        raise ConfigError("optimized_split=validation needs a validation split (this data config has none).")
    if ckpt_path:
        check_fits(ckpt_path, module.state_dict())
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return {k.removeprefix("val/"): float(v) for k, v in (results[0] if results else {}).items()}


def objective(record: dict[str, Any] | None, metric: str | None, split: str = "test") -> float | None:
    """The value a Hydra sweeper optimises: ``record[split][metric]``. For tuning
    (``split="validation"``) a metric the run did not compute is an error, not a silent None."""
    if not metric or not record:
        return None
    values = record.get(split) or {}
    if split == "validation" and metric not in values:
        raise ConfigError(f"optimized_metric={metric!r} is not among the validation metrics {sorted(values)}.")
    value = values.get(metric)
    return None if value is None else float(value)


def _flops(module: MultiTaskModule, datamodule) -> int:
    """FLOPs of one sample through every task (:func:`medmtl.models.flops_per_sample`), from the
    first batch of each evaluation loader: one loader serves every task, or (datasets whose tasks
    have separate inputs) each loader its own tasks, whose FLOPs add up."""
    from medmtl.models import flops_per_sample

    loaders = datamodule.test_dataloader() if datamodule.split_sizes().get("test") else datamodule.val_dataloader()
    counted: set[str] = set()
    total = 0
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        batch = next(iter(loader))
        tasks = [t.name for t in module.tasks if t.target_key in batch and t.name not in counted]
        if tasks:
            inputs = [batch[key].to(module.device) for key in datamodule.input_keys]
            total += flops_per_sample(module.model, inputs, tasks)
            counted.update(tasks)
    return total


def check_data_before_training(datamodule, test: bool, data_cfg: DictConfig | None = None, cache_dir: str | None = None) -> None:
    """Read the dataset and check every split the run will need now, not after hours of training
    (an empty test split would otherwise end the run with empty test metrics), reading once every
    sample of a split that is otherwise decoded only when drawn (:mod:`medmtl.data.preflight`)."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.check_splits("fit")
    if test:
        datamodule.check_splits("test")
    splits = ["train", "val"] + (["test"] if test else [])
    settings = OmegaConf.to_container(data_cfg, resolve=True) if data_cfg is not None else {}
    workers = int(data_cfg.get("num_workers", 0) or 0) if data_cfg is not None else 0
    check_every_sample(datamodule, splits, cache_dir, settings, num_workers=workers)  # type: ignore[arg-type]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test with the best checkpoint, write ``metrics.json``; return the metrics record.

    With ``skip_finished`` (default) a folder that already holds this config's ``metrics.json``
    is not trained again: its record is returned (completing an interrupted sweep). A folder that
    holds another configuration's run, or that another process is writing, is refused.
    """
    check_config(cfg)  # values Hydra cannot judge (a batch of 0, a learning rate "fast"), before anything is built
    output_dir = Path(cfg.paths.output_dir)
    primary = is_primary_process()  # under DDP, rank 0 owns the folder; the other ranks only train
    if primary:
        folder_lock.acquire(output_dir, "run folder")  # (re-entrant: train.py's Hydra callback took it)
    digest = config_digest(cfg)
    finished = check_reused_folder(output_dir, digest, earlier_digests(cfg))
    if finished is not None and cfg.get("skip_finished", True):
        log.info("Skipping %s: it holds a finished run of this config (skip_finished=false to rerun).", output_dir)
        print(f"skipped (finished before): {output_dir}")
        return finished
    if primary:
        record_identity(output_dir, digest)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    check_data_before_training(datamodule, cfg.get("test", True), cfg.data, cfg.paths.get("cache_dir"))
    module = build_module(cfg, datamodule)
    timer = IterationTimer()
    loggers = _instantiate_group(cfg.get("logger"))
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if not datamodule.has_validation:
        # nothing to select on (IDRiD with val_fraction=0, Roy 2025's protocol): the last weights are tested
        callbacks = [c for c in callbacks if not (isinstance(c, ModelCheckpoint) and c.monitor is not None)]
    per_task = _per_task_selection(cfg, datamodule)
    trainer = build_trainer(
        cfg, callbacks + [timer] + ([per_task] if per_task else []), loggers, validate=datamodule.has_validation
    )

    started = time.perf_counter()
    resume = None
    csv_dir = _csv_log_dir(loggers)
    if cfg.get("train", True):
        resume = _resolve_ckpt_path(cfg.get("ckpt_path"), output_dir, cfg.get("auto_resume", True))
        if resume:
            check_resumes(check_fits(resume, module.state_dict()), resume, module.strategy_name)
            if csv_dir is not None:
                set_aside_before_resume(csv_dir)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    iterations = module.iterations  # before testing loads the best checkpoint (and its counter)
    test_metrics: dict[str, float] = {}
    selector = _model_selection_callback(trainer)
    best = selector.best_model_path if selector is not None else ""
    score = selector.best_model_score if selector is not None else None
    best_score = float(score) if score is not None else None
    if per_task is not None and cfg.get("train", True):
        best = per_task.compose(trainer, cast(SeparateNetworks, module.model)) or best
    # test_weights=last: the weights training ended with (the quickstart's rule); best: the selected checkpoint
    tested = best if cfg.get("test_weights", "best") == "best" else ""
    validation_metrics = None
    if cfg.get("optimized_split", "test") == "validation":
        validation_metrics = _validate(trainer, module, datamodule, tested or None)
    if cfg.get("test", True):
        test_metrics = _test(trainer, module, datamodule, tested or None, output_dir)
    if csv_dir is not None:  # after testing: the logger's header only knows the keys it logged itself
        merge_after_resume(csv_dir)

    record = {
        "test": test_metrics,
        "validation": validation_metrics,
        "num_parameters": module.num_parameters(),
        "flops_per_sample": _flops(module, datamodule),
        "seconds_per_iteration": timer.mean_seconds,
        "iterations": iterations,
        "epochs": trainer.current_epoch,
        "seed": cfg.seed,
        "fold": cfg.data.get("fold"),
        "protocol": cfg.data.get("protocol"),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "strategy": cfg.optim.get("name", cfg.optim.strategy._target_.rsplit(".", 1)[-1]),
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "lr": cfg.optim.get("optimizer", {}).get("lr"),
        "task_metrics": module.evaluator.TASK_METRICS if module.evaluator is not None else None,
        "lower_is_better": sorted(module.evaluator.LOWER_IS_BETTER) if module.evaluator is not None else [],
        "n_tasks": len(module.tasks),
        "best_checkpoint": best,
        "tested_weights": tested or "last",
        "best_val_loss": best_score if selector is not None and selector.monitor == "val/loss" else None,
        "selected_on": {"monitor": selector.monitor, "mode": selector.mode, "best": best_score} if selector is not None else None,
        "best_epochs_per_task": dict(per_task.epochs) if per_task is not None else None,
        "wall_seconds": time.perf_counter() - started,
        "resumed_from": resume,
        "overrides": _overrides(),
        "arms": _arm_choices(),
        "config_digest": digest,
        "device": str(module.device),
        "torch": torch.__version__,
    }
    if primary:
        write_metrics_json(output_dir / "metrics.json", record)
        summary = {f"test/{k}": v for k, v in test_metrics.items()}
        summary |= {"parameters": record["num_parameters"], "s/iteration": record["seconds_per_iteration"] or float("nan")}
        print_summary(f"{record['strategy']} | {record['model']} | {record['data']} -> {output_dir}", summary)
    _finish_wandb(loggers)
    return record


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test a checkpoint (``ckpt_path``); write ``metrics.json``.

    The model, the tasks and the data come from the run that wrote the checkpoint
    (:func:`configuration_of_run`), changed only where the command line says so."""
    if not cfg.get("ckpt_path"):
        raise ConfigError("eval needs ckpt_path=/path/to/checkpoint.ckpt.")
    output_dir = Path(cfg.paths.output_dir)
    cfg = configuration_of_run(cfg)
    save_config(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    datamodule.check_splits("test")
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg, [], _instantiate_group(cfg.get("logger")))
    metrics = _test(trainer, module, datamodule, cfg.ckpt_path, output_dir)
    record = {
        "test": metrics,
        "checkpoint": str(cfg.ckpt_path),
        "overrides": _overrides(),
        "num_parameters": module.num_parameters(),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "strategy": cfg.optim.get("name"),
        "seed": cfg.get("seed"),
        "fold": cfg.data.get("fold"),
        "task_metrics": module.evaluator.TASK_METRICS if module.evaluator is not None else None,
        "lower_is_better": sorted(module.evaluator.LOWER_IS_BETTER) if module.evaluator is not None else [],
    }
    write_metrics_json(output_dir / "metrics.json", record)
    print_summary(f"eval {cfg.ckpt_path}", {f"test/{k}": v for k, v in metrics.items()})
    _finish_wandb(trainer.loggers)
    return record


#: what an evaluation takes from its own command line rather than from the run it evaluates
EVALUATION_KEYS = tuple(NOT_IDENTITY) + ("trainer", "task_name", "train", "test")


def run_folder_of(ckpt_path: str | Path) -> Path:
    """``<run>/checkpoints/<name>.ckpt`` -> ``<run>``."""
    ckpt_path = Path(ckpt_path).expanduser().resolve()
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def override_key(override: str) -> str:
    """The config key an override sets: ``data.root=/x`` -> ``data.root``, ``+a=1`` -> ``a``."""
    return override.split("=", 1)[0].lstrip("+~")


def run_overrides_of(ckpt_path: str | Path) -> list[str]:
    """The command-line overrides of the run that wrote ``ckpt_path`` (``.hydra/overrides.yaml``)."""
    path = run_folder_of(ckpt_path) / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def configuration_of_run(cfg: DictConfig) -> DictConfig:
    """The evaluated run's saved ``config_resolved.yaml``, with every key the evaluation's command
    line set (``data.root=...``, ``data=refuge``, ``trainer=gpu``) and the evaluation's own
    settings (:data:`EVALUATION_KEYS`) taken from ``cfg``. A checkpoint outside a run folder is
    evaluated with ``cfg`` as composed (``model=...`` and ``data=...`` must then be given)."""
    saved_path = run_folder_of(cfg.ckpt_path) / "config_resolved.yaml"
    if not saved_path.is_file():
        log.warning(
            "No run configuration next to %s (looked for %s): the model and data come from the command line.",
            cfg.ckpt_path,
            saved_path,
        )
        return cfg
    saved = OmegaConf.load(saved_path)
    run_overrides = run_overrides_of(cfg.ckpt_path)
    chosen = [override_key(o) for o in _overrides() if o not in run_overrides and not o.startswith(("ckpt_path=", "hydra."))]
    container = OmegaConf.to_container(saved)
    assert isinstance(container, dict)  # a run's config_resolved.yaml is a mapping
    merged = OmegaConf.create({k: v for k, v in container.items() if k not in EVALUATION_KEYS})
    for key in EVALUATION_KEYS:
        if key in cfg:
            merged[key] = OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
    for key in chosen:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        OmegaConf.update(merged, key, value, merge=False, force_add=True)
    log.info(
        "Evaluating with the configuration of %s%s.", saved_path.parent, f", changed by {', '.join(chosen)}" if chosen else ""
    )
    return merged


def evaluation_arguments(arguments: list[str]) -> list[str]:
    """``src/eval.py``'s command line with the evaluated run's overrides in front, so that Hydra
    composes the run's model, data and experiment (an IDRiD run's ``data.lesions=[od]`` is then a
    valid override); a run override whose key the command line sets, or whose group it switches,
    is left out."""
    ckpt = next((a.split("=", 1)[1] for a in arguments if a.startswith("ckpt_path=")), None)
    if not ckpt:
        return arguments
    given = {override_key(a) for a in arguments if not a.startswith("-")}
    kept = [
        o
        for o in run_overrides_of(ckpt)
        if override_key(o) not in given and not any(override_key(o).startswith(g + ".") for g in given)
    ]
    return kept + arguments


def _log_examples_to_wandb(loggers: list[Any], predictions: dict) -> None:
    """The kept test examples as images (ground truth | prediction) in the W&B run, if one logs."""
    wandb_loggers = [logger for logger in loggers if type(logger).__name__ == "WandbLogger"]
    examples = {k.removeprefix("example_"): v for k, v in predictions.items() if k.startswith("example_")}
    if not wandb_loggers or not examples:
        return
    from medmtl.analysis.overlays import panels_with_captions

    panels, captions = panels_with_captions(examples)
    for logger in wandb_loggers:
        logger.log_image(key="test/examples", images=panels, caption=captions)


def _finish_wandb(loggers: list[Any]) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()


def save_config(cfg: DictConfig) -> None:
    """The resolved config next to Hydra's own ``.hydra/config.yaml`` (which keeps interpolations)."""
    if is_primary_process():
        atomic_write_text(Path(cfg.paths.output_dir) / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
