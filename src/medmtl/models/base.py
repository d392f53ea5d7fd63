"""The contract every multi-task network fulfils, so that any strategy trains any model.

A :class:`MultiTaskNet` returns ``{task: logits}`` and can run the forward of a subset of its
tasks: ``model(image, tasks=["glaucoma"])`` computes only what that task's output depends on (for
the U-Net, the encoder and the classifier, not the decoder). It declares, per task, the modules on
the task's path; from these the parameter groups that strategies need are derived:

- ``path_parameters(k)``: every parameter L_k depends on (what MTL-IO's optimizer k owns);
- ``head_parameters(k)``: the parameters only task k uses;
- ``shared_parameters()``: parameters on the path of two tasks or more (W in docs/methods.md).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn

from medmtl.errors import ConfigError


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    result = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            result.append(p)
    return result


class MultiTaskNet(nn.Module, abc.ABC):
    """Base class: subclasses set ``task_names`` and implement ``forward`` and ``path_modules``."""

    task_names: tuple[str, ...] = ()

    @abc.abstractmethod
    def forward(self, *inputs: Any, **options: Any) -> dict[str, torch.Tensor]:
        """``forward(*inputs, tasks=None)``: ``{task: logits}`` for the requested tasks (all by
        default), computing nothing else. The inputs are the datamodule's ``input_keys`` in order:
        ``forward(image, tasks=None)`` for most networks, ``forward(context, body, tasks=None)``
        for EMOTIC's."""

    def representation(self, *inputs: Any, **options: Any) -> dict[str, torch.Tensor]:
        """Optional: the shared features Z the task heads read (``forward = heads(representation)``).
        Needed by the "-UB" strategies, which use dL_k/dZ instead of dL_k/dW."""
        raise TypeError(f"{type(self).__name__} does not expose a shared representation (needed by the -UB strategies).")

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Optional: task outputs from the shared representation (see :meth:`representation`)."""
        raise TypeError(f"{type(self).__name__} does not expose its heads (needed by the -UB strategies).")

    def readout_layer(self, task: str) -> nn.Linear:
        """Optional: the one linear layer that is task ``task``'s whole head, reading the shared
        vector (the single (N, D) tensor of :meth:`representation`), as BayesAgg-MTL's Bayesian
        last layer needs."""
        raise ConfigError(
            f"{type(self).__name__} has no head that is one linear layer on a shared vector "
            "(optim=bayesagg_mtl needs one: model=emotic_2enc, or model=multi_lenet model.head=linear)."
        )

    @abc.abstractmethod
    def path_modules(self, task: str) -> list[nn.Module]:
        """Modules whose parameters task ``task``'s output depends on."""

    def auxiliary_loss(self, task: str) -> torch.Tensor | None:
        """Optional: a loss the network adds to ``task``'s loss for its last forward (MoE gates)."""
        return None

    def deep_supervision(self, task: str) -> list[torch.Tensor]:
        """Optional: ``task``'s intermediate predictions of the last forward, shaped like its final
        output; each gets the task's loss during training (PAD-Net, MTI-Net)."""
        return []

    def set_training_progress(self, fraction: float) -> None:
        """Optional: told epoch / max_epochs at each training epoch start (MoE routing phases)."""

    def routing_statistics(self) -> dict[str, float]:
        """Optional: per-task diagnostics of the evaluation forwards since the last call."""
        return {}

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Optional: parameters trained at ``optim.backbone_lr_scale`` x the learning rate."""
        return []

    def fusion_parameters(self) -> list[nn.Parameter]:
        """Optional: the units that mix task networks (cross-stitch, NDDR), trained at
        ``optim.fusion_lr_scale`` x the learning rate."""
        return []

    def _check_tasks(self, tasks: Sequence[str] | None) -> tuple[str, ...]:
        if tasks is None:
            return self.task_names
        unknown = [t for t in tasks if t not in self.task_names]
        if unknown:
            raise KeyError(f"{type(self).__name__} has no task {unknown}; it has {list(self.task_names)}.")
        return tuple(tasks)

    def _cached(self, key: tuple, compute) -> list:
        """Parameter groups are fixed once the network is built (``.to()`` keeps the Parameter
        objects), and strategies ask for them at every step: compute each once."""
        cache = self.__dict__.setdefault("_parameter_groups", {})
        if key not in cache:
            cache[key] = compute()
        return list(cache[key])

    def path_parameters(self, task: str) -> list[nn.Parameter]:
        return self._cached(("path", task), lambda: _unique(p for m in self.path_modules(task) for p in m.parameters()))

    def shared_parameters(self) -> list[nn.Parameter]:
        def compute() -> list[nn.Parameter]:
            counts: dict[int, int] = {}
            for task in self.task_names:
                for p in self.path_parameters(task):
                    counts[id(p)] = counts.get(id(p), 0) + 1
            return [p for p in self.parameters() if counts.get(id(p), 0) >= 2]

        return self._cached(("shared",), compute)

    def shared_modules(self) -> list[nn.Module]:
        """Path modules used by two tasks or more (none is a child of another by construction)."""
        counts: dict[int, list] = {}
        for task in self.task_names:
            for m in self.path_modules(task):
                counts.setdefault(id(m), [m, 0])[1] += 1
        return [m for m, n in counts.values() if n >= 2]

    def last_shared_layer(self) -> nn.Parameter:
        """Weight of the last layer on the path of EVERY task (GradNorm's W): the last parameter
        with two or more dimensions, in module order, among those all tasks share."""
        common = None
        for task in self.task_names:
            ids = {id(p) for p in self.path_parameters(task)}
            common = ids if common is None else common & ids
        candidates = [p for p in self.parameters() if id(p) in (common or set()) and p.dim() >= 2]
        if not candidates:
            raise ConfigError(f"{type(self).__name__} has no layer shared by all of its tasks {list(self.task_names)}.")
        return candidates[-1]

    def head_parameters(self, task: str) -> list[nn.Parameter]:
        def compute():
            shared = {id(p) for p in self.shared_parameters()}
            return [p for p in self.path_parameters(task) if id(p) not in shared]

        return self._cached(("head", task), compute)


class SeparateNetworks(MultiTaskNet):
    """One independent network per task (single-task learning, ``optim=stl``).

    Each member is the same architecture built for one task only, so that the parameter count is
    the sum of the single-task networks (Pascal et al. 2022 Table 1 reports STL this way) and no parameter is
    shared: summing the task losses and taking one Adam step equals training each network alone,
    because Adam acts element-wise.
    """

    def __init__(self, members: dict[str, MultiTaskNet]):
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.task_names = tuple(members)

    def member(self, task: str) -> MultiTaskNet:
        """Task ``task``'s network."""
        return cast(MultiTaskNet, self.members[task])

    def forward(self, *inputs: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Each requested task from its own network, all reading the same inputs (one or several)."""
        return {t: self.member(t)(*inputs, tasks=[t])[t] for t in self._check_tasks(tasks)}

    def path_modules(self, task: str) -> list[nn.Module]:
        return [self.members[task]]

    def auxiliary_loss(self, task: str) -> torch.Tensor | None:
        return self.member(task).auxiliary_loss(task)

    def deep_supervision(self, task: str) -> list[torch.Tensor]:
        return self.member(task).deep_supervision(task)

    def set_training_progress(self, fraction: float) -> None:
        for task in self.task_names:
            self.member(task).set_training_progress(fraction)

    def routing_statistics(self) -> dict[str, float]:
        return {k: v for task in self.task_names for k, v in self.member(task).routing_statistics().items()}

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for task in self.task_names for p in self.member(task).backbone_parameters()]
