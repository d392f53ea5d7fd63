"""Tasks: what a network is asked to predict, and how a prediction is scored during training.

A :class:`Task` names its target in the batch, the kind of output it expects and its per-sample
loss. Partial labels: a batch may carry ``present/<task>`` (a bool tensor of shape ``(B,)``);
samples where it is false contribute nothing, and a batch with no labelled sample for a task
yields ``None`` for that task's loss (the strategies skip it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import torch

from medmtl import losses
from medmtl.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The name of the validation stream a strategy may read while training (Auto-Lambda's
#: ``ctx.task_batch(VALIDATION)``); not a task name: task names have no colon.
VALIDATION = ":validation"

#: Output kinds a model knows how to build a head for.
KINDS = ("binary", "multiclass", "multilabel", "regression", "segmentation", "heatmap", "semantic", "depth", "normals", "edge")
#: kinds predicted per pixel (a decoder or a dense head serves them)
DENSE_KINDS = ("segmentation", "heatmap", "semantic", "depth", "normals", "edge")


@dataclass(frozen=True)
class Task:
    """One task of a multi-task problem.

    Attributes:
        name: key of the task's output in the model's output dict.
        kind: image-level ``binary`` (one logit), ``multiclass`` (``num_outputs`` logits, softmax)
            , ``multilabel`` (``num_outputs`` independent logits) or ``regression`` (``num_outputs``
            real values); per pixel ``segmentation``
            (one-channel binary logits), ``heatmap`` (one-channel map regressed after a sigmoid),
            ``semantic`` (``num_outputs`` class logits; target pixels equal to ``ignore_index`` are
            unlabelled), ``depth`` (one channel regressed; target 0 = invalid pixel), ``normals``
            (three channels, normalised to a unit vector; a zero target vector = invalid pixel) or
            ``edge`` (one-channel boundary logits).
        loss: per-sample loss ``(output, target) -> (B,)``.
        target_key: key of the target in the batch (defaults to ``name``).
        num_outputs: logits per sample of an image-level head (1 for ``binary``), classes of a
            ``semantic`` task.
        ignore_index: the target value of unlabelled pixels of a ``semantic`` task.
        metadata: free-form facts about the task (e.g. its dataset, input size, 3D).
        auxiliary: predicted and trained, never evaluated: no metrics, no Delta_MTL term, not in
            the validation loss that selects the model (:func:`mark_auxiliary`). Any network
            predicts it like the others; the decoder-focused ones (PAD-Net, MTI-Net) predict it
            only as an initial prediction that feeds the distillation of the other tasks, as
            Vandenhende et al. 2022 use normals and edges on NYUDv2.
    """

    name: str
    kind: str
    loss: LossFn
    target_key: str = ""
    num_outputs: int = 1
    metadata: Mapping[str, object] = field(default_factory=dict)
    ignore_index: int | None = None
    auxiliary: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Task {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}.")
        if not self.target_key:
            object.__setattr__(self, "target_key", self.name)

    @property
    def is_dense(self) -> bool:
        """True for pixel-level outputs (they need a decoder)."""
        return self.kind in DENSE_KINDS

    @property
    def channels(self) -> int:
        """Output channels of the task's head (what every architecture's head builder reads)."""
        if self.kind in ("multiclass", "multilabel", "regression", "semantic"):
            return self.num_outputs
        return 3 if self.kind == "normals" else 1

    def present(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Mask of samples labelled for this task, or None when every sample is."""
        return batch.get(f"present/{self.name}")

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Mean loss over the samples labelled for this task; None when there is none (including
        a batch without this task's target at all: another dataset's batch)."""
        if self.target_key not in batch:
            return None
        mask = self.present(batch)
        if mask is not None:
            mask = mask.to(device=output.device, dtype=torch.bool)
            if not bool(mask.any()):
                return None
        per_sample = self.loss(output, batch[self.target_key])
        return per_sample.mean() if mask is None else per_sample[mask].mean()


def refuge_tasks(focal_gamma: float = 2.0) -> list[Task]:
    """The four tasks of Pascal et al. 2022, in MTL-IO's update order: classification, OD, OC, fovea."""
    return [
        Task("glaucoma", "binary", partial(losses.binary_focal, gamma=focal_gamma)),
        Task("od", "segmentation", losses.binary_cross_entropy),
        Task("oc", "segmentation", losses.binary_cross_entropy),
        Task("fovea", "heatmap", losses.sigmoid_l1, target_key="fovea_heatmap"),
    ]


def mark_auxiliary(tasks: Sequence[Task], names: Sequence[str]) -> list[Task]:
    """``tasks`` with those named in ``names`` made auxiliary (``Task.auxiliary``); a name that is
    not a task, or every task auxiliary (nothing left to evaluate), is refused in one sentence."""
    all_names = [t.name for t in tasks]
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise ConfigError(f"data.auxiliary_tasks names {unknown}, which are not among the tasks {all_names} (data.tasks).")
    if set(all_names) <= set(names):
        raise ConfigError(f"data.auxiliary_tasks makes every task auxiliary ({all_names}): at least one must be evaluated.")
    return [replace(t, auxiliary=True) if t.name in names else t for t in tasks]


def evaluated(tasks: Sequence[Task]) -> list[Task]:
    """The tasks that are scored (every task but the auxiliary ones)."""
    return [t for t in tasks if not t.auxiliary]


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
