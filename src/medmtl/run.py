"""Training and evaluation runs from a composed Hydra config (called by ``src/train.py``, ``src/eval.py``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from medmtl.callbacks import IterationTimer
from medmtl.data.errors import DatasetError
from medmtl.models.weights import WeightsNotFoundError
from medmtl.module import MultiTaskModule, StrategyNotApplicable
from medmtl.utils.csv_log import merge_after_resume, set_aside_before_resume
from medmtl.utils.outputs import print_summary, write_metrics_json, write_predictions
from medmtl.utils.run_identity import RunFolderConflict, check_reused_folder, config_digest, record_identity

log = logging.getLogger(__name__)

#: Errors whose message is the whole story: printed as one sentence, no stack trace.
USER_ERRORS = (DatasetError, WeightsNotFoundError, RunFolderConflict, StrategyNotApplicable)


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def build_module(cfg: DictConfig, datamodule) -> MultiTaskModule:
    return MultiTaskModule(
        model=instantiate(cfg.model),
        strategy=instantiate(cfg.optim.strategy),
        tasks=datamodule.tasks,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        gradient_clip_val=cfg.optim.get("gradient_clip_val"),
        backbone_lr_scale=cfg.optim.get("backbone_lr_scale"),
    )


def _in_sweep() -> bool:
    if not HydraConfig.initialized():
        return False
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _overrides() -> list[str]:
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


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
    return str(last) if last.is_file() else None


def _csv_log_dir(loggers: list[Any]) -> Path | None:
    return next((Path(logger.log_dir) for logger in loggers if isinstance(logger, CSVLogger)), None)


def _model_selection_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The checkpoint callback that monitors a metric (the other one only keeps ``last.ckpt``)."""
    return next((c for c in trainer.checkpoint_callbacks if c.monitor is not None), None)


def _test(trainer: L.Trainer, module: MultiTaskModule, datamodule, ckpt_path: str | None, output_dir: Path) -> dict[str, float]:
    """Test ``ckpt_path`` (the module's current weights when None); write ``predictions.npz``."""
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    if module.test_predictions is not None:
        write_predictions(output_dir / "predictions.npz", module.test_predictions)
        _log_examples_to_wandb(trainer.loggers, module.test_predictions)
    return {k.removeprefix("test/"): float(v) for k, v in (results[0] if results else {}).items()}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test with the best checkpoint, write ``metrics.json``; return the metrics record.

    With ``skip_finished`` (default) a folder that already holds this config's ``metrics.json``
    is not trained again: its record is returned (completing an interrupted sweep).
    """
    output_dir = Path(cfg.paths.output_dir)
    digest = config_digest(cfg)
    finished = check_reused_folder(output_dir, digest, in_sweep=_in_sweep())
    if finished is not None and cfg.get("skip_finished", True):
        log.info("Skipping %s: it holds a finished run of this config (skip_finished=false to rerun).", output_dir)
        print(f"skipped (finished before): {output_dir}")
        return finished
    record_identity(output_dir, digest)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    timer = IterationTimer()
    loggers = _instantiate_group(cfg.get("logger"))
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if not getattr(datamodule, "has_validation", True):
        # nothing to select on (IDRiD with val_fraction=0, seed 001's protocol): the last weights are tested
        callbacks = [c for c in callbacks if not (isinstance(c, ModelCheckpoint) and c.monitor is not None)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks + [timer], logger=loggers or False)

    started = time.perf_counter()
    resume = None
    csv_dir = _csv_log_dir(loggers)
    if cfg.get("train", True):
        resume = _resolve_ckpt_path(cfg.get("ckpt_path"), output_dir, cfg.get("auto_resume", True))
        if resume and csv_dir is not None:
            set_aside_before_resume(csv_dir)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    iterations = module.iterations  # before testing loads the best checkpoint (and its counter)
    test_metrics: dict[str, float] = {}
    selector = _model_selection_callback(trainer)
    best = selector.best_model_path if selector is not None else ""
    if cfg.get("test", True):
        test_metrics = _test(trainer, module, datamodule, best or None, output_dir)
    if csv_dir is not None:  # after testing: the logger's header only knows the keys it logged itself
        merge_after_resume(csv_dir)

    record = {
        "test": test_metrics,
        "num_parameters": module.num_parameters(),
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
        "task_metrics": getattr(module.evaluator, "TASK_METRICS", None),
        "n_tasks": len(module.tasks),
        "best_checkpoint": best,
        "best_val_loss": float(selector.best_model_score)
        if selector is not None and selector.best_model_score is not None
        else None,
        "wall_seconds": time.perf_counter() - started,
        "resumed_from": resume,
        "overrides": _overrides(),
        "config_digest": digest,
        "device": str(module.device),
        "torch": torch.__version__,
    }
    write_metrics_json(output_dir / "metrics.json", record)
    summary = {f"test/{k}": v for k, v in test_metrics.items()}
    summary |= {"parameters": record["num_parameters"], "s/iteration": record["seconds_per_iteration"] or float("nan")}
    print_summary(f"{record['strategy']} | {record['model']} | {record['data']} -> {output_dir}", summary)
    _finish_wandb(loggers)
    return record


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test a checkpoint (``ckpt_path``) on the configured data; write ``metrics.json``."""
    if not cfg.get("ckpt_path"):
        raise ValueError("eval needs ckpt_path=/path/to/checkpoint.ckpt.")
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=_instantiate_group(cfg.get("logger")) or False)
    metrics = _test(trainer, module, datamodule, cfg.ckpt_path, output_dir)
    record = {"test": metrics, "checkpoint": cfg.ckpt_path, "overrides": _overrides(), "num_parameters": module.num_parameters()}
    write_metrics_json(output_dir / "metrics.json", record)
    print_summary(f"eval {cfg.ckpt_path}", {f"test/{k}": v for k, v in metrics.items()})
    return record


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
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
