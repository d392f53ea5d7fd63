"""Per-task gradients of the shared parameters tracked across iterations (a T x |W| buffer).

DB-MTL (an average of each task's log-loss gradient) and MoCo (a tracking estimate y_k of each
task's full gradient) keep one vector per task of the size of the shared parameters. The number
of shared parameters is not known when the strategy is set up, so the buffer is sized on the first
step and resized before a checkpoint is loaded into it; being a buffer, it moves with the module's
device and is in every checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import StepContext, Strategy
from medmtl.strategies.gradient_combination import JACOBIAN_METHODS, write_flat_gradient


class TrackedTaskGradients(Strategy):
    """Base: ``tracked`` (T x |W|) and ``updates`` (per-task update counts)."""

    tracked: torch.Tensor
    updates: torch.Tensor

    supports_fp16_scaler = False
    reuses_forward_graph = True

    def __init__(self, jacobian_method: str = "loop"):
        super().__init__()
        if jacobian_method not in JACOBIAN_METHODS:
            raise ConfigError(f"optim.strategy.jacobian_method must be one of {JACOBIAN_METHODS}, got {jacobian_method!r}.")
        self.jacobian_method = jacobian_method

    def setup(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        self.register_buffer("tracked", torch.zeros(0))
        self.register_buffer("updates", torch.zeros(len(self.task_names), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "tracked")
        if saved is not None:
            self.tracked = torch.zeros_like(saved, device=self.tracked.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def task_index(self, names: list[str], device: torch.device) -> torch.Tensor:
        return torch.tensor([self.task_names.index(n) for n in names], device=device)

    def track(self, jacobian: torch.Tensor, index: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """tracked_k <- rate_k tracked_k + (1 - rate_k) g_k for the present tasks ``index`` (rows of
        ``jacobian``); returns their new rows. ``rate`` may depend on ``updates``, already counted."""
        if self.tracked.numel() == 0:
            self.tracked = jacobian.new_zeros(len(self.task_names), jacobian.shape[1])
        rate = rate.to(jacobian.dtype).unsqueeze(1)
        rows = rate * self.tracked[index].to(jacobian.dtype) + (1 - rate) * jacobian
        self.tracked[index] = rows.to(self.tracked.dtype)
        return rows

    def count_updates(self, index: torch.Tensor) -> torch.Tensor:
        """Add one to the present tasks' counts; returns their counts t (from 1)."""
        self.updates[index] += 1
        return self.updates[index]

    @staticmethod
    def step(ctx: StepContext, update: torch.Tensor, head_total: torch.Tensor, names: list[str]) -> None:
        """One optimizer step: ``update`` written into the shared parameters' gradient, the present
        tasks' heads getting the gradient of ``head_total`` (each head depends on its own loss)."""
        model = ctx.model
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        write_flat_gradient(model.shared_parameters(), update)
        ctx.mark_global(model.shared_parameters())  # made from the ranks' averaged Jacobian
        ctx.backward(head_total, inputs=[p for n in names for p in model.head_parameters(n)])
        ctx.clip_gradients(optimizer)
        optimizer.step()
