"""A strategy's own small parameter vector stepped by its own optimizer.

FAMO's task logits and Auto-Lambda's task weights are not trained by the network's optimizer: they
take a step on a gradient the strategy computes itself, with an optimizer of their own that follows
no learning-rate schedule. The values live in a buffer of the strategy (device moves, checkpoints);
the optimizer works on a plain leaf tensor (not a module parameter, so the network's optimizer never
sees it) and its state (Adam's moments) is returned by :meth:`state_dict` for the strategy's extra
state, so that a resumed run takes the same steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class OwnOptimizer:
    """``make(params)`` builds the optimizer (e.g. ``lambda p: torch.optim.Adam(p, lr=1e-3)``)."""

    def __init__(self, make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]):
        self.make = make
        self._optimizer: torch.optim.Optimizer | None = None
        self._leaf = torch.zeros(0)
        self._pending: dict[str, Any] | None = None

    def step(self, values: torch.Tensor, gradient: torch.Tensor) -> None:
        """One step of the optimizer on ``values`` (updated in place) along ``gradient``."""
        if self._optimizer is None:
            self._leaf = values.detach().clone().requires_grad_()
            self._optimizer = self.make([self._leaf])
            if self._pending is not None:
                self._optimizer.load_state_dict(self._pending)
                self._pending = None
        with torch.no_grad():
            self._leaf.copy_(values)
        self._leaf.grad = gradient.to(self._leaf)
        self._optimizer.step()
        with torch.no_grad():
            values.copy_(self._leaf)

    def state_dict(self) -> dict[str, Any]:
        if self._optimizer is not None:
            return self._optimizer.state_dict()
        return self._pending or {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Kept until the first step makes the optimizer (the values' device is known then)."""
        self._optimizer = None
        self._pending = state or None
