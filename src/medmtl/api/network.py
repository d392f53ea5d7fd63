"""Any ``nn.Module`` as a :class:`~medmtl.models.base.MultiTaskNet`: the user names what is shared
and what belongs to each task, and every strategy can train it.

``TaskNetwork(module, shared=..., heads={task: ...})`` takes modules or parameters for both. The
module's forward returns ``{task: output}`` (or ``outputs(module, *inputs)`` maps what it returns to
that dict). With ``encode`` (inputs -> the shared representation Z, a tensor or a dict of tensors)
the -UB strategies and ``graddrop`` can work at Z; the heads then read Z through ``decode(z, task)``,
by default ``heads[task](z)``.

Checked when built, each in one sentence: a parameter both shared and a task's, a task without
parameters, a parameter in two tasks' heads, a parameter of the module on no task's path (it would
never be trained).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.base import MultiTaskNet

Part = nn.Module | Iterable[nn.Parameter]


def _parameters(part: Part) -> list[nn.Parameter]:
    return list(part.parameters()) if isinstance(part, nn.Module) else list(part)


class TaskNetwork(MultiTaskNet):
    """Args: module (the user's network); shared (the parameters every task uses: a module, a list
    of modules' parameters); heads (task -> the parameters only that task uses); outputs (optional:
    ``(module, *inputs) -> {task: output}`` when the module's forward returns something else);
    encode / decode (optional, module docstring)."""

    def __init__(
        self,
        module: nn.Module,
        shared: Part,
        heads: Mapping[str, Part],
        outputs: Callable[..., Mapping[str, torch.Tensor]] | None = None,
        encode: Callable[..., Any] | None = None,
        decode: Callable[[Any, str], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.module = module
        self.task_names = tuple(heads)
        self._outputs, self._encode, self._decode = outputs, encode, decode
        self._shared = _parameters(shared)
        self._heads = {task: _parameters(part) for task, part in heads.items()}
        self._shared_parts = [shared] if isinstance(shared, nn.Module) else None
        self._head_parts = {t: [p] for t, p in heads.items() if isinstance(p, nn.Module)}
        self._check()

    def _check(self) -> None:
        if not self.task_names:
            raise ConfigError("TaskNetwork needs at least one task in heads=.")
        shared = {id(p) for p in self._shared}
        owner: dict[int, str] = {}
        for task, params in self._heads.items():
            if not params:
                raise ConfigError(
                    f"Task {task!r} has no parameters of its own: give heads[{task!r}] its head's module or parameters."
                )
            for p in params:
                if id(p) in shared:
                    raise ConfigError(f"A parameter of shape {tuple(p.shape)} is given both as shared and as task {task!r}'s.")
                if id(p) in owner:
                    raise ConfigError(
                        f"A parameter of shape {tuple(p.shape)} is given to both task {owner[id(p)]!r} and {task!r}."
                    )
                owner[id(p)] = task
        untrained = [name for name, p in self.module.named_parameters() if p.requires_grad and id(p) not in shared | set(owner)]
        if untrained:
            raise ConfigError(
                f"Parameters on no task's path would never train: {', '.join(untrained[:5])}; add them to shared= or heads=."
            )

    # ----- the MultiTaskNet contract ---------------------------------------------------------
    def forward(self, *inputs: Any, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        names = self._check_tasks(tasks)
        if self._encode is not None:
            return self.heads(self.representation(*inputs), names)
        produced = self._outputs(self.module, *inputs) if self._outputs is not None else self.module(*inputs)
        if not isinstance(produced, Mapping):
            raise TypeError(
                f"TaskNetwork: the module returned {type(produced).__name__}; give outputs= to map it to {{task: output}}."
            )
        missing = [t for t in names if t not in produced]
        if missing:
            raise KeyError(f"TaskNetwork: the module's outputs lack tasks {missing}; it returned {sorted(produced)}.")
        return {t: produced[t] for t in names}

    def representation(self, *inputs: Any, **options: Any) -> dict[str, torch.Tensor]:
        if self._encode is None:
            raise TypeError("TaskNetwork was built without encode=: the representation strategies (-UB, graddrop) need it.")
        z = self._encode(*inputs)
        return dict(z) if isinstance(z, Mapping) else {"z": z}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        z: Any = shared["z"] if set(shared) == {"z"} else shared
        decode = self._decode or (lambda value, task: self._head_module(task)(value))
        return {task: decode(z, task) for task in self._check_tasks(tasks)}

    def _head_module(self, task: str) -> nn.Module:
        if task not in self._head_parts:
            raise TypeError(f"TaskNetwork: heads[{task!r}] is a parameter list; give decode= to apply it to the representation.")
        return self._head_parts[task][0]

    def readout_layer(self, task: str) -> nn.Linear:
        """``heads[task]`` when it is one ``nn.Linear`` applied to ``encode``'s vector (BayesAgg-MTL)."""
        part = self._head_parts.get(self._check_tasks([task])[0], [None])[0]
        if self._encode is None or self._decode is not None or not isinstance(part, nn.Linear):
            raise ConfigError(
                f"TaskNetwork: optim=bayesagg_mtl needs encode= (the shared vector) "
                f"and heads[{task!r}] one nn.Linear applied to it."
            )
        return part

    def path_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_tasks([task])
        return self._shared + self._heads[task]

    def path_modules(self, task: str) -> list[nn.Module]:
        if self._shared_parts is None or task not in self._head_parts:
            raise TypeError("TaskNetwork was given parameters, not modules: mode=gramian needs shared= and heads= as modules.")
        return [*self._shared_parts, *self._head_parts[task]]


__all__ = ["TaskNetwork"]
