"""One LightningModule for every architecture and strategy (manual optimization).

Training: each mini-batch goes to ``strategy.training_step(ctx, batch)``; the module only offers
the :class:`~medmtl.strategies.base.StepContext` (forward of a subset of tasks, per-task losses,
``manual_backward``, optimizers, gradient clipping) and logs what the strategy returns.

Counters: ``trainer.global_step`` counts optimizer steps (T per mini-batch under MTL-IO), so the
module keeps ``iterations``, the number of mini-batches trained, saved in checkpoints. Schedulers
are stepped once per epoch by the module, never per optimizer step.

Evaluation: validation and test run every task's forward, log the per-task losses and their sum
(``val/loss``, the model-selection criterion of Pascal et al. 2022), and feed the datamodule's evaluator
(``datamodule.make_evaluator()``) for the dataset's metrics.

Non-finite values (:mod:`medmtl.nonfinite`): the context's optimizers and losses go through a
:class:`~medmtl.nonfinite.NonFiniteGuard` (``optim.nonfinite``); an evaluation output, a validation
loss or a weight about to be checkpointed that is NaN or infinite stops the run in one sentence,
so that the evaluators, model selection and the checkpoints never see one.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities import move_data_to_device
from torch.nn.parameter import is_lazy

from medmtl.api.step import MultiTaskStep
from medmtl.data.task_streams import TaskBatchStreams
from medmtl.distributed import GradientSync, Reducer, broadcast_buffers, innermost_optimizer
from medmtl.epoch_means import EpochMeans, logger_writes_this_step
from medmtl.errors import ConfigError, NonFiniteError
from medmtl.metrics.gather import gather_evaluator, in_split_order, merge
from medmtl.models import build_model, count_parameters
from medmtl.models.base import MultiTaskNet
from medmtl.nonfinite import NonFiniteGuard, first_nonfinite
from medmtl.speed import SpeedOptions, check_compile
from medmtl.strategies.base import Strategy
from medmtl.strategies.context import TrainingContext, network_losses
from medmtl.tasks import Task
from medmtl.utils.rng import collect_rng_states, restore_rng_states

log = logging.getLogger(__name__)

SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def with_scaled_groups(factory: Callable[..., torch.optim.Optimizer], model: MultiTaskNet, scales: Mapping[str, float | None]):
    """An optimizer factory that puts the model's parameter groups named in ``scales`` -- ``backbone``
    (``model.backbone_parameters()``; Roy 2025: backbone 3e-5, the rest 3e-4) and ``fusion``
    (``model.fusion_parameters()``: the survey trains cross-stitch and NDDR units at 100 x) -- at
    ``scale`` x the learning rate; the other parameters keep it. A None scale leaves its group alone."""
    scales = {name: scale for name, scale in scales.items() if scale}
    if not scales:
        return factory
    base_lr = getattr(factory, "keywords", {}).get("lr")
    if base_lr is None:
        raise ConfigError(f"optim.{next(iter(scales))}_lr_scale needs optim.optimizer.lr to be set.")
    members: dict[str, set[int]] = {}
    for name in scales:
        members[name] = {id(p) for p in getattr(model, f"{name}_parameters")()}
        if not members[name]:
            raise ConfigError(f"optim.{name}_lr_scale: {type(model).__name__} declares no {name} parameters.")

    def build(params) -> torch.optim.Optimizer:
        params = list(params)
        grouped = set().union(*members.values())
        groups = [{"params": [p for p in params if id(p) not in grouped]}]
        groups += [{"params": [p for p in params if id(p) in ids], "lr": base_lr * scales[name]} for name, ids in members.items()]
        return factory([g for g in groups if g["params"]])

    return build


def with_decoupled_weight_decay(factory: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """The optimizer factory with weight decay decoupled from the gradient (Loshchilov & Hutter
    2019), whatever the strategy's optimizer: Adam gets ``decoupled_weight_decay=True`` (AdamW's
    update); AdamW and MAO's optimizer decay decoupled already; anything else is refused. Lets an
    experiment state "decoupled decay" once (``optim.decoupled_weight_decay``) for every method."""
    from medmtl.strategies.mao import MultiAdaptive

    target = getattr(factory, "func", factory)
    if target is torch.optim.Adam:
        return partial(factory, decoupled_weight_decay=True)
    if target in (torch.optim.AdamW, MultiAdaptive):
        return factory
    raise ConfigError(
        f"optim.decoupled_weight_decay=true is defined for Adam, AdamW and MAO, not {getattr(target, '__name__', target)}."
    )


class StrategyNotApplicable(ConfigError):
    """The chosen strategy cannot train this task set (said in one sentence)."""


def check_precision(precision: str, strategy: Strategy) -> None:
    """Refuse ``16-mixed`` for strategies the fp16 gradient scaler cannot serve: Lightning's scaler
    unscales and steps once per optimizer per iteration, on gradients it produced itself
    (docs/contributing.md, "Traps of the stack")."""
    if precision.startswith("16") and not strategy.supports_fp16_scaler:
        raise ConfigError(
            f"precision={precision} uses a gradient scaler that needs one optimizer step per iteration on gradients "
            f"from manual_backward; {type(strategy).__name__} does not work that way. "
            "Use trainer.precision=bf16-mixed or 32-true."
        )


class MultiTaskModule(L.LightningModule):
    """Model + tasks + strategy.

    Args:
        model: the architecture's constructor (Hydra ``_partial_``), called with ``tasks=``.
        strategy: the training strategy.
        tasks: the dataset's task set.
        optimizer: optimizer constructor (``_partial_``), called with a parameter list.
        scheduler: optional scheduler constructor, called with each optimizer; stepped per epoch.
        gradient_clip_val: max global gradient norm per optimizer step (None = no clipping).
        backbone_lr_scale: the backbone's learning rate as a fraction of the others' (None: the same).
        fusion_lr_scale: the learning rate of the network's fusion units (cross-stitch, NDDR) as a
            multiple of the others' (None: the same).
        nonfinite: ``stop`` | ``skip`` | ``off`` (:mod:`medmtl.nonfinite`).
        input_keys: the batch entries the network reads, in order (the datamodule's ``input_keys``).
        max_consecutive_skips: with ``skip``, the run stops after this many iterations in a row
            that dropped an update.
        speed: ``channels_last`` and ``compile`` (:mod:`medmtl.speed`), both off by default.
    """

    def __init__(
        self,
        model: Callable[..., MultiTaskNet],
        strategy: Strategy,
        tasks: Sequence[Task],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: SchedulerFactory | None = None,
        gradient_clip_val: float | None = None,
        backbone_lr_scale: float | None = None,
        fusion_lr_scale: float | None = None,
        nonfinite: str = "stop",
        max_consecutive_skips: int = 10,
        input_keys: Sequence[str] = ("image",),
        speed: Mapping[str, Any] | None = None,
        strategy_name: str | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        #: written into every checkpoint: a checkpoint resumes only the strategy that wrote it
        self.strategy_name = strategy_name or type(strategy).__name__
        self.tasks = list(tasks)
        self.input_keys = tuple(input_keys)
        self.task_by_name = {t.name: t for t in self.tasks}
        self.strategy = strategy
        auxiliary = [t.name for t in self.tasks if t.auxiliary]
        if auxiliary and strategy.separate_networks:
            raise ConfigError(
                f"optim={self.strategy_name} trains one network per task, and the auxiliary tasks {auxiliary} only "
                "help a network they share: drop data.auxiliary_tasks for the single-task baselines."
            )
        self.strategy.setup([t.name for t in self.tasks])
        if any(is_lazy(p) for p in self.strategy.parameters()):
            # Lightning's summary would call its parameter count inaccurate; the run reports the
            # network's own (metrics.json), and the strategy sizes its parameters at the first step
            warnings.filterwarnings("ignore", message=".*contains an instance of `UninitializedParameter`")
        self.model = build_model(model, self.tasks, strategy.separate_networks)
        self.speed = SpeedOptions.of(speed)
        check_compile(self.speed, strategy)
        self.speed.prepare(self.model)
        scales = {"backbone": backbone_lr_scale, "fusion": fusion_lr_scale}
        self.optimizer_factory = with_scaled_groups(optimizer, self.model, scales)
        self.scheduler_factory = scheduler
        if gradient_clip_val and not strategy.supports_gradient_clipping:
            raise ConfigError(f"{type(strategy).__name__} does not clip gradients: set optim.gradient_clip_val=null.")
        self.gradient_clip_val = gradient_clip_val
        self.nonfinite = NonFiniteGuard(nonfinite, max_consecutive_skips)
        #: every training iteration goes through the API's step (one code path with a user's own loop)
        self.step = MultiTaskStep.over(self.model, strategy, self._training_context, self.optimizer_list, self.nonfinite)
        self.epoch_means = EpochMeans()  # the training values' epoch means (medmtl.epoch_means)
        self.evaluator = None
        self.test_predictions: dict | None = None
        self.task_streams = TaskBatchStreams([t.name for t in self.tasks])  # GA's per-task loaders
        self.sync = GradientSync(Reducer())  # replaced in setup, once the process group exists
        self._evaluation_losses: dict[str, np.ndarray] = {}  # task -> [sum of losses x samples, samples]

    # ----- the StepContext offered to strategies -------------------------------------------
    def inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The network's inputs: the batch entries named by the datamodule's ``input_keys``."""
        return tuple(self.speed.input(batch[key]) for key in self.input_keys)

    def forward(self, batch: Mapping[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.model(*self.inputs(batch), tasks=tasks)

    def _batch_size(self, batch: Mapping[str, torch.Tensor]) -> int:
        """Samples in ``batch`` (1 for the step marker of strategies that draw their own per-task batches)."""
        first = batch.get(self.input_keys[0])
        return int(first.shape[0]) if first is not None else 1

    def losses(self, outputs, batch, tasks=None, deep_supervision: bool = True) -> dict[str, torch.Tensor]:
        """Per-task losses with the network's own terms (:func:`~medmtl.strategies.context.network_losses`)."""
        return network_losses(self.model, self.tasks, outputs, batch, tasks, deep_supervision)

    def task_batch(self, task: str):
        """Next batch of ``task``'s own endless training stream (:mod:`medmtl.data.task_streams`),
        on the module's device and in the trainer's precision."""
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning when fit gets one
        batch = move_data_to_device(self.task_streams.next_batch(datamodule, task), self.device)
        return self.trainer.precision_plugin.convert_input(batch)  # as Lightning converts its own batches (64-true)

    def optimizer_list(self) -> list:
        """``self.optimizers()`` normalised to a list (Lightning returns a bare object for one)."""
        optimizers = self.optimizers()
        return list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]

    def clip_gradients_of(self, optimizer) -> None:
        if self.gradient_clip_val:
            optimizer = innermost_optimizer(optimizer)
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    @property
    def iterations(self) -> int:
        """Training iterations (mini-batches) so far, counted by the step (checkpointed)."""
        return self.step.iteration

    @iterations.setter
    def iterations(self, value: int) -> None:
        self.step.iteration = value

    @property
    def context(self) -> TrainingContext:
        """The :class:`~medmtl.strategies.context.TrainingContext` of this module: Lightning's
        ``manual_backward`` and optimizers, the module's clipping and per-task streams."""
        return self._training_context()

    def _training_context(self) -> TrainingContext:
        return TrainingContext(
            self.model,
            self.tasks,
            self.optimizer_list,
            self.manual_backward,
            self.clip_gradients_of,
            self.task_batch,
            self.nonfinite,
            self.input_keys,
            self.sync,
        )

    # ----- Lightning hooks -----------------------------------------------------------------
    def configure_optimizers(self):
        """The strategy's optimizers; torch's own checks of their settings (a negative learning rate,
        betas outside [0, 1)) become configuration errors naming the option group."""
        try:
            optimizers = self.strategy.configure_optimizers(self.model, self.optimizer_factory)
            schedulers = [self.scheduler_factory(opt) for opt in optimizers] if self.scheduler_factory else None
        except ValueError as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(f"optim.optimizer / optim.scheduler: {error}.") from error
        return optimizers if schedulers is None else (optimizers, schedulers)

    def setup(self, stage: str) -> None:
        self.sync = GradientSync(Reducer())
        if stage == "fit" and self._trainer is not None:
            check_precision(str(self.trainer.precision), self.strategy)
            self.strategy.check_distributed(self.sync.reducer.world_size)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        datamodule.check_splits(stage)
        if stage == "fit" and datamodule.separate_task_inputs and not self.strategy.uses_task_batches:
            raise StrategyNotApplicable(
                f"optim={type(self.strategy).__name__} needs one forward pass over a batch labelled for every "
                "task, but this task set gives each task its own dataset and input; use optim=ga "
                "(gradient accumulation over per-task batches), or data.joint_batches=true when every task is 2D "
                "at one size."
            )
        if stage == "fit" and self.strategy.uses_validation_batches and not datamodule.has_validation:
            raise StrategyNotApplicable(
                f"optim={type(self.strategy).__name__} learns its task weights on validation batches, and this data "
                "config has no validation split."
            )
        if stage in ("fit", "validate", "test"):
            self.evaluator = datamodule.make_evaluator()

    def training_step(self, batch, batch_idx: int) -> None:
        logged = self.step(batch)
        batch_size = self._batch_size(batch)
        if logged:
            task_losses = [v for k, v in logged.items() if k.startswith("loss/") and k != "loss/total"]
            logged.setdefault("loss/total", torch.stack(task_losses).sum() if task_losses else torch.tensor(0.0))
            self.epoch_means.add(logged, batch_size)
        if not logger_writes_this_step(self.trainer):
            return  # only the epoch means need this step's values (medmtl.epoch_means)
        step_values: dict[str, torch.Tensor | float] = {f"train/{k}_step": v for k, v in logged.items()}
        step_values["train/iteration"] = float(self.iterations)
        if self.nonfinite.mode == "skip":
            step_values["train/skipped_updates"] = float(self.nonfinite.skipped_updates)
        self.log_dict(step_values, on_step=True, on_epoch=False, batch_size=batch_size)

    def on_train_start(self) -> None:
        self.sync.reducer.share_random_states()  # the ranks draw alike (docs/distributed.md)

    def on_train_end(self) -> None:
        self.task_streams.close()  # the per-task loaders' worker processes end with training

    def on_train_epoch_start(self) -> None:
        max_epochs = self.trainer.max_epochs or 1
        self.model.set_training_progress(self.current_epoch / max(1, max_epochs))
        self.step.epoch = self.current_epoch  # Lightning's count is the truth (resumes included)

    def on_train_epoch_end(self) -> None:
        means = self.epoch_means.pop()
        if means:
            self.log_dict({f"train/{k}_epoch": v for k, v in means.items()}, on_step=False, on_epoch=True)
            self.log("train/loss", means["loss/total"], on_step=False, on_epoch=True, prog_bar=True)
        self.step.end_epoch()
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    monitored = self.trainer.callback_metrics.get("val/loss")
                    if monitored is None:
                        raise ConfigError("optim.scheduler=ReduceLROnPlateau needs a validation loss: keep a validation split.")
                    scheduler.step(float(monitored))
                else:
                    scheduler.step()

    def _evaluation_step(self, stage: str, batch) -> None:
        """Forward the tasks this batch is labelled for (every task, unless the batch comes from one
        dataset of a multi-dataset task set); per-task losses, the evaluator's update."""
        labelled = [t.name for t in self.tasks if t.target_key in batch]
        outputs = self.forward(batch, labelled)
        bad = first_nonfinite(outputs)
        if bad is not None:
            raise NonFiniteError(
                f"The network's {stage} output for task {bad!r} is NaN or infinite (epoch {self.current_epoch}): the "
                "weights have diverged; lower optim.optimizer.lr or clip gradients (optim.gradient_clip_val)."
            )
        losses = self.losses(outputs, batch, labelled, deep_supervision=False)
        batch_size = self._batch_size(batch)
        for task, loss in losses.items():
            mask = self.task_by_name[task].present(batch)
            count = float(batch_size if mask is None else mask.sum())
            self._evaluation_losses[task] = self._evaluation_losses.get(task, np.zeros(2)) + [float(loss) * count, count]
        if self.evaluator is not None:
            self.evaluator.update(outputs, batch)

    def _evaluation_epoch_end(self, stage: str) -> None:
        """``<stage>/loss`` = sum over the evaluated tasks of each task's mean loss over its labelled
        samples (model selection monitors ``val/loss``, as Pascal et al. 2022: the summed validation
        loss); an auxiliary task's is logged as ``<stage>/loss/<task>`` and left out of the sum."""
        totals = self._gathered_evaluation_losses()
        if totals:
            means = {task: total / seen for task, (total, seen) in totals.items() if seen}
            bad = [task for task, value in means.items() if not math.isfinite(value)]
            if bad:
                raise NonFiniteError(
                    f"The {stage} loss of task {bad[0]!r} is NaN or infinite (epoch {self.current_epoch}) "
                    "although its outputs are finite: check that task's targets."
                )
            self.log_dict({f"{stage}/loss/{task}": value for task, value in means.items()})
            scored = [value for task, value in means.items() if not self.task_by_name[task].auxiliary]
            self.log(f"{stage}/loss", sum(scored), prog_bar=stage == "val")
        self._evaluation_losses = {}
        routing = self.model.routing_statistics()
        if routing:
            self.log_dict({f"{stage}/experts/{task}": value for task, value in routing.items()})
        if self.evaluator is None:
            return
        gather_evaluator(self.evaluator, self.sync.reducer)
        metrics = self.evaluator.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, prog_bar=False)
        if stage == "test":
            predictions = self.evaluator.predictions()
            self.test_predictions = in_split_order(predictions) if self.sync.reducer.distributed else predictions
        self.evaluator.reset()

    def _gathered_evaluation_losses(self) -> dict[str, np.ndarray]:
        """task -> [sum of loss x samples, samples] over every rank's shard (exact under DDP:
        the shards do not overlap)."""
        return merge(self.sync.reducer.gather_objects(self._evaluation_losses))

    def _start_evaluation(self) -> None:
        """Every rank evaluates rank 0's network (its batch norm statistics: as DDP's broadcast)."""
        broadcast_buffers(self.model, self.sync.reducer)
        if self.evaluator is not None:
            self.evaluator.reset()

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation()

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation()

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the network and the strategy's learnable weights; strategy buffers use NaN for "not yet seen"
        weights = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        weights |= {f"strategy.{k}": v for k, v in self.strategy.named_parameters() if not is_lazy(v)}
        bad = first_nonfinite(weights)
        if bad is not None:
            raise NonFiniteError(
                f"Not writing a checkpoint at epoch {self.current_epoch}: weight {bad!r} is NaN or "
                "infinite; the weights have diverged (lower optim.optimizer.lr)."
            )
        checkpoint["medmtl_iterations"] = self.iterations
        checkpoint["medmtl_strategy"] = self.strategy_name
        checkpoint["medmtl_rng_states"] = collect_rng_states()
        checkpoint["medmtl_task_positions"] = self.task_streams.state_dict()
        reducer = self.sync.reducer
        if reducer.distributed:  # every rank's own random states and loader positions (rank 0 writes the file)
            checkpoint["medmtl_rank_states"] = reducer.gather_objects(
                {"rng": checkpoint["medmtl_rng_states"], "task_positions": checkpoint["medmtl_task_positions"]}
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Iteration counter, global random states (exact resume; see :mod:`medmtl.utils.rng`) and
        the per-task loader positions of GA; under DDP, this rank's own. A checkpoint of another
        number of ranks resumes with rank 0's states (a warning says so: not an exact continuation)."""
        self.iterations = int(checkpoint.get("medmtl_iterations", 0))
        states = {"rng": checkpoint.get("medmtl_rng_states"), "task_positions": checkpoint.get("medmtl_task_positions", {})}
        per_rank = checkpoint.get("medmtl_rank_states") or [states]  # one process: its own states only
        reducer = self.sync.reducer
        if len(per_rank) == reducer.world_size:
            states = per_rank[reducer.rank]
        else:
            log.warning(
                "This checkpoint was written by %d process(es) and is resumed by %d: every rank continues from "
                "rank 0's random states and loader positions (not an exact continuation).",
                len(per_rank),
                reducer.world_size,
            )
        if states["rng"] is not None:
            restore_rng_states(states["rng"])
        self.task_streams.load_state_dict(states["task_positions"])

    def num_parameters(self) -> int:
        return count_parameters(self.model)
