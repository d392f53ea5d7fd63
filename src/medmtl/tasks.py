"""Tasks: what a network is asked to predict, and how a prediction is scored during training.

A :class:`Task` names its target in the batch, the kind of output it expects and its per-sample
loss. Partial labels: a batch may carry ``present/<task>`` (a bool tensor of shape ``(B,)``);
samples where it is false contribute nothing, and a batch with no labelled sample for a task
yields ``None`` for that task's loss (the strategies skip it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping

import torch

from medmtl import losses

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Output kinds a model knows how to build a head for.
KINDS = ("binary", "segmentation", "heatmap")


@dataclass(frozen=True)
class Task:
    """One task of a multi-task problem.

    Attributes:
        name: key of the task's output in the model's output dict.
        kind: ``binary`` (image-level logit), ``segmentation`` (one-channel pixel logits) or
            ``heatmap`` (one-channel map regressed after a sigmoid).
        loss: per-sample loss ``(logits, target) -> (B,)``.
        target_key: key of the target in the batch (defaults to ``name``).
    """

    name: str
    kind: str
    loss: LossFn
    target_key: str = ""
    metadata: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Task {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}.")
        if not self.target_key:
            object.__setattr__(self, "target_key", self.name)

    @property
    def is_dense(self) -> bool:
        """True for pixel-level outputs (they need a decoder)."""
        return self.kind in ("segmentation", "heatmap")

    def present(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Mask of samples labelled for this task, or None when every sample is."""
        return batch.get(f"present/{self.name}")

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Mean loss over the samples labelled for this task; None when there is none."""
        per_sample = self.loss(output, batch[self.target_key])
        mask = self.present(batch)
        if mask is None:
            return per_sample.mean()
        mask = mask.to(device=per_sample.device, dtype=torch.bool)
        if not bool(mask.any()):
            return None
        return per_sample[mask].mean()


def refuge_tasks(focal_gamma: float = 2.0) -> list[Task]:
    """The four tasks of seed 000, in MTL-IO's update order: classification, OD, OC, fovea."""
    return [
        Task("glaucoma", "binary", partial(losses.binary_focal, gamma=focal_gamma)),
        Task("od", "segmentation", losses.binary_cross_entropy),
        Task("oc", "segmentation", losses.binary_cross_entropy),
        Task("fovea", "heatmap", losses.sigmoid_l1, target_key="fovea_heatmap"),
    ]


def compute_losses(
    tasks: list[Task], outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Losses of the tasks present in ``outputs`` that have at least one labelled sample."""
    result = {}
    for task in tasks:
        if task.name not in outputs:
            continue
        loss = task.compute_loss(outputs[task.name], batch)
        if loss is not None:
            result[task.name] = loss
    return result
