"""Task-balance diagnostics (Hervella et al. 2024, Figs. 4-5), for any strategy.

Every ``every_n_iterations`` mini-batches, per layer l (a module owning parameters directly) and
per task k:

- ``grad``: the mean magnitude of task k's gradient over the layer's parameters, mean |g_k|;
- ``contribution``: its mean contribution to the parameter update, mean(lr_eff * |g_k|), where
  lr_eff is the per-parameter effective learning rate that the optimizer applies to task k:
  lr * c_t / (sqrt(v_hat) + eps) for Adam/AdamW (one v shared by the tasks), lr * c_t / sqrt(v_k + eps)
  with task k's own second moment for MAO, lr for SGD.

The task gradients are computed on the iteration's batch at the weights before the step (T extra
backward passes on diagnostic iterations only, through the module's forward; the training step
itself is untouched), lr_eff from the optimizer state after the step. Rows are appended to
``<output>/diagnostics.csv`` in long format: iteration, layer, task, grad, contribution.

Not with a strategy in ``mode: gramian``: torchjd's Gramian engine records every forward of the
shared modules, and the diagnostic forward would be recorded too; the pair is refused before
training with a sentence that names both ways out (``mode: jacobian`` gives the same update).
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch

from medmtl.errors import ConfigError
from medmtl.strategies.gradient_combination import task_jacobian


def layers_of(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Modules that own parameters directly, by qualified name."""
    result = {}
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own:
            result[name or "root"] = own
    return result


def effective_lr(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, task: str) -> torch.Tensor | float:
    """Per-element rate that the optimizer applies to task ``task``'s (bias-corrected) gradient
    moment on ``param``: an optimizer with per-task state answers itself (its ``effective_lr``
    method, e.g. MAO's lr c_t (1 - b1^t) / sqrt(v_k + eps)); Adam/AdamW: lr / (sqrt(v_hat) + eps);
    SGD and others: lr."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    if hasattr(optimizer, "effective_lr"):
        return optimizer.effective_lr(param, task)
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    state = optimizer.state.get(param, {})
    b2 = group.get("betas", (0.0, 0.0))[1]
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and "exp_avg_sq" in state:
        v_hat = state["exp_avg_sq"] / (1 - b2 ** float(state["step"]))
        return group["lr"] / (v_hat.sqrt() + group["eps"])
    return group["lr"]


class TaskBalanceDiagnostics(L.Callback):
    def __init__(self, every_n_iterations: int = 50, filename: str = "diagnostics.csv"):
        self.every = every_n_iterations
        self.filename = filename
        self._pending: dict | None = None

    @staticmethod
    def _optimizer_for(pl_module, optimizers, task: str, param):
        """Task k's own optimizer when the strategy has one per task; otherwise the one that holds ``param``."""
        index = pl_module.strategy.task_optimizer_index(task)
        candidates = [optimizers[index]] if index is not None else optimizers
        for optimizer in candidates:
            inner = getattr(optimizer, "optimizer", optimizer)
            if any(q is param for group in inner.param_groups for q in group["params"]):
                return optimizer
        return None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if getattr(pl_module.strategy, "mode", None) == "gramian":
            raise ConfigError(
                "callbacks=diagnostics cannot run with optim.strategy.mode=gramian (the Gramian engine would "
                "record the diagnostic forward): use optim.strategy.mode=jacobian, the same update, or drop the diagnostics."
            )

    def _due(self, pl_module) -> bool:
        return pl_module.iterations % self.every == 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._pending = None
        if not self._due(pl_module):
            return
        model = pl_module.model
        with torch.enable_grad():
            outputs = pl_module.forward(batch)
            losses = pl_module.losses(outputs, batch)
            if not losses:
                return
            names = list(losses)
            params = list(model.parameters())
            jacobian = task_jacobian(torch.stack([losses[n] for n in names]), params).detach()
        sizes = [p.numel() for p in params]
        per_task = {name: dict(zip((id(p) for p in params), row.split(sizes))) for name, row in zip(names, jacobian)}
        self._pending = {"iteration": pl_module.iterations, "gradients": per_task}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._pending is None:
            return
        optimizers = pl_module.optimizer_list()
        rows = []
        for layer, params in layers_of(pl_module.model).items():
            for task, gradients in self._pending["gradients"].items():
                magnitudes, contributions, count = 0.0, 0.0, 0
                for p in params:
                    g = gradients[id(p)].abs()
                    optimizer = self._optimizer_for(pl_module, optimizers, task, p)
                    lr = effective_lr(optimizer, p, task) if optimizer is not None else 0.0
                    lr = lr.flatten() if isinstance(lr, torch.Tensor) else lr  # g is flat
                    magnitudes += float(g.sum())
                    contributions += float((lr * g).sum())
                    count += g.numel()
                rows.append([self._pending["iteration"], layer, task, magnitudes / count, contributions / count])
        path = Path(trainer.default_root_dir) / self.filename
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["iteration", "layer", "task", "grad", "contribution"])
            writer.writerows(rows)
        self._pending = None
