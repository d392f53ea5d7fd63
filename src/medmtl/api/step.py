"""One training iteration of any strategy in the user's own loop.

    step = MultiTaskStep(network, tasks, "pcgrad", optimizer=partial(torch.optim.Adam, lr=1e-3))
    for batch in loader:          # {"image": x, "left": y1, "right": y2, "present/right": mask?}
        logged = step(batch)      # the strategy's update; detached values to log (loss/<task>, ...)
    step.end_epoch()              # epoch-level strategies (DWA, DTP, STCH's warm-up, ...)

The strategy object, its optimizers and the step context are the framework's own
(:class:`~medmtl.strategies.context.PlainContext`: plain ``Tensor.backward``, global-norm clipping);
only the Lightning hooks are not involved. The framework's LightningModule trains through this same
class (:meth:`MultiTaskStep.over`: its context is Lightning's ``manual_backward``, optimizers and
per-task loader streams), so one iteration is one code path in both. Losses are given as :class:`~medmtl.tasks.Task` objects
(a per-sample loss and where the target is in the batch), not as values: most strategies evaluate
a task's loss more than once per iteration (MTL-IO re-forwards per task, FAMO after its step, the
-UB strategies at the representation), and the per-sample form is what makes partial labels
(``present/<task>`` masks) and data parallelism exact.

Under ``torch.distributed`` (any backend, the user's default process group, one process per batch
shard, the model not wrapped in DistributedDataParallel) every strategy's step equals one process's
step on the union of the ranks' batches: the reductions are those of the framework
(:mod:`medmtl.distributed`), the parameters and buffers start from rank 0's and the ranks' random
states are rank 0's at the first step.

Strategies that read more than the batch say so before any parameter changes: ``ga`` needs
``task_batches`` (task -> an iterator of that task's batches), ``auto_lambda`` needs
``validation_batches`` (an iterator of validation batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.nn.parameter import is_lazy

from medmtl.api.registry import build, make_strategy, optim_config
from medmtl.distributed import Reducer, broadcast_buffers
from medmtl.errors import ConfigError
from medmtl.models.base import MultiTaskNet
from medmtl.nonfinite import NonFiniteGuard, learning_rates
from medmtl.strategies.base import OptimizerFactory, Strategy
from medmtl.strategies.context import PlainContext, TrainingContext
from medmtl.tasks import VALIDATION, Task


class MultiTaskStep:
    """Args: network (a :class:`~medmtl.api.TaskNetwork` or any ``MultiTaskNet``); tasks (their
    names are the network's); strategy (a name from ``src/medmtl/conf/optim`` or a built strategy); optimizer
    (parameters -> optimizer; default: the strategy's in ``src/medmtl/conf/optim``, Adam at 1e-4 for most);
    clip_norm (global gradient norm per optimizer step; default the strategy's, usually none);
    input_keys (the batch entries passed to the network, in order); task_batches /
    validation_batches (module docstring); nonfinite (``stop`` | ``skip`` | ``off``, as
    ``optim.nonfinite``); options (the strategy's options, with a name)."""

    def __init__(
        self,
        network: MultiTaskNet,
        tasks: Sequence[Task],
        strategy: str | Strategy,
        *,
        optimizer: OptimizerFactory | None = None,
        clip_norm: float | None = None,
        input_keys: Sequence[str] = ("image",),
        task_batches: Mapping[str, Iterator] | None = None,
        validation_batches: Iterator | None = None,
        nonfinite: str | None = None,
        **options: Any,
    ):
        config = optim_config(strategy) if isinstance(strategy, str) else {}
        if not isinstance(strategy, str) and options:
            raise ConfigError("Strategy options go with a strategy name; a built strategy already has its own.")
        self.strategy = make_strategy(strategy, **options) if isinstance(strategy, str) else strategy
        if self.strategy.separate_networks:
            raise ConfigError(
                f"{type(self.strategy).__name__} trains one network per task: give each task its own network and "
                "MultiTaskStep (with vanilla), which is what it does."
            )
        self.network, self.tasks = network, list(tasks)
        names = [t.name for t in self.tasks]
        if sorted(names) != sorted(network.task_names):
            raise ConfigError(f"The tasks {names} are not the network's {list(network.task_names)}.")
        streams = dict(task_batches or {})
        if self.strategy.uses_task_batches and sorted(streams) != sorted(names):
            raise ConfigError(
                f"{type(self.strategy).__name__} draws one batch per task: give task_batches={{task: iterator}} for {names}."
            )
        if self.strategy.uses_validation_batches:
            if validation_batches is None:
                raise ConfigError(f"{type(self.strategy).__name__} reads validation batches: give validation_batches=<iterator>.")
            streams[VALIDATION] = validation_batches
        factory = (
            optimizer
            if optimizer is not None
            else build(config.get("optimizer", {"_target_": "torch.optim.Adam", "_partial_": True}))
        )
        self.reducer = Reducer()
        self.strategy.setup(names)
        reference = next(network.parameters())
        self.strategy.to(device=reference.device, dtype=reference.dtype)  # learnable weights follow the network
        self.strategy.check_distributed(self.reducer.world_size)
        self._start_from_rank_zero()
        self.guard = NonFiniteGuard(nonfinite or config.get("nonfinite", "stop"), config.get("max_consecutive_skips", 10))
        self.optimizers = self.strategy.configure_optimizers(network, factory)
        clip = clip_norm if clip_norm is not None else config.get("gradient_clip_val")
        self.context = PlainContext(network, self.tasks, self.optimizers, clip, streams, self.guard, input_keys, self.reducer)
        self._current_context: Callable[[], TrainingContext] = self._plain_context
        self._current_optimizers: Callable[[], Sequence[torch.optim.Optimizer]] = self._plain_optimizers
        self._shares_random_states = True
        self.iteration, self.epoch = 0, 0

    @classmethod
    def over(
        cls,
        network: MultiTaskNet,
        strategy: Strategy,
        context: Callable[[], TrainingContext],
        optimizers: Callable[[], Sequence[torch.optim.Optimizer]],
        guard: NonFiniteGuard,
    ) -> MultiTaskStep:
        """The step of a strategy whose context, optimizers and guard were built elsewhere: the
        framework's LightningModule, whose context (Lightning's ``manual_backward``, optimizers and
        the datamodule's per-task streams) exists only once the trainer is attached, hence the
        callables. The caller has set the strategy up and shares the ranks' random states itself
        (at every start of training, resumes included)."""
        step = cls.__new__(cls)
        step.strategy, step.network, step.guard = strategy, network, guard
        step._current_context, step._current_optimizers = context, optimizers
        step._shares_random_states = False
        step.iteration, step.epoch = 0, 0
        return step

    def _plain_context(self) -> TrainingContext:
        return self.context

    def _plain_optimizers(self) -> Sequence[torch.optim.Optimizer]:
        return self.optimizers

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One iteration on ``batch``: the strategy's update of the network (and of its own weights)."""
        context = self._current_context()
        missing = [key for key in context.input_keys if key not in batch]
        if missing and not self.strategy.uses_task_batches:  # GA draws its own batches (the framework hands it a step marker)
            raise KeyError(f"The batch lacks the network's inputs {missing} (input_keys); it has {sorted(batch)}.")
        if self.iteration == 0 and self._shares_random_states:
            self.reducer.share_random_states()
        self.guard.begin_iteration(self.iteration, self.epoch, self.network)
        logged = self.strategy.training_step(context, batch)
        self.guard.end_iteration(sorted({lr for o in self._current_optimizers() for lr in learning_rates(o)}))
        self.iteration += 1
        return logged

    step = __call__

    def end_epoch(self) -> None:
        """Tell the strategy that an epoch ended (DWA's and DTP's statistics, STCH's warm-up)."""
        self.strategy.on_train_epoch_end(self.epoch)
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed loop needs besides the network: the strategy's state, the optimizers', the counters."""
        return {
            "strategy": self.strategy.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "iteration": self.iteration,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.strategy.load_state_dict(state["strategy"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])

    def _start_from_rank_zero(self) -> None:
        if not self.reducer.distributed:
            return
        for module in (self.network, self.strategy):
            with torch.no_grad():
                for parameter in module.parameters():
                    if not is_lazy(parameter):  # sized and drawn on rank 0 at the first step (LDC-MTL's router)
                        parameter.copy_(self.reducer.agree(parameter))
            broadcast_buffers(module, self.reducer)


__all__ = ["MultiTaskStep"]
