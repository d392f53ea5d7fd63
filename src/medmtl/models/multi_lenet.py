"""The multi-LeNet of Sener & Koltun 2018 for MultiMNIST: a shared LeNet encoder, one small
classifier per digit (their ``multi_lenet.py``, read, not copied).

Encoder (shared, 21,330 parameters): conv 1->10 (5 x 5), 2 x 2 max pool, ReLU; conv 10->20 (5 x 5),
dropout of whole channels, 2 x 2 max pool, ReLU; flattened (320) to a 50-unit linear layer, ReLU.
The 50 features are the shared representation Z (MGDA-UB's). Head (per task, 3,060 parameters):
linear 50->50, ReLU, dropout, linear 50->10 (logits; the authors' log-softmax + NLL is our
cross-entropy).

``dropout``:

- ``authors`` (default): as their code, the masks are Bernoulli(0.5) without the 1/(1-p)
  rescaling of ``nn.Dropout``; the encoder draws one channel mask per batch (all its samples drop
  the same channels), each head one mask per element; in evaluation nothing is dropped (so the
  evaluated activations are about twice the trained ones, as in their network);
- ``standard``: ``nn.Dropout2d(0.5)`` and ``nn.Dropout(0.5)`` (a mask per sample, rescaled);
- ``none``.

``head``: ``mlp`` (default, theirs) or ``linear``: each digit read by one linear layer 50->10 from
the shared features (no dropout there), the network BayesAgg-MTL's Bayesian last layer needs
(Achituve et al. 2024's networks end in a shared vector and one linear layer per task).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from medmtl.errors import ConfigError
from medmtl.models.base import MultiTaskNet
from medmtl.tasks import Task

DROPOUTS = ("authors", "standard", "none")
HEADS = ("mlp", "linear")


class UnscaledDropout(nn.Module):
    """Multiply by a Bernoulli(1 - p) mask, without rescaling, in training only. ``per_batch``: one
    mask over the channels (dimension 1), shared by every sample and position; else one per element."""

    def __init__(self, p: float = 0.5, per_batch: bool = False):
        super().__init__()
        self.p, self.per_batch = p, per_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        shape = (1, x.shape[1]) + (1,) * (x.dim() - 2) if self.per_batch else x.shape
        return x * torch.bernoulli(torch.full(shape, 1.0 - self.p, device=x.device, dtype=x.dtype))


def _dropouts(kind: str) -> tuple[nn.Module, nn.Module]:
    """(the encoder's channel dropout, the heads' element dropout) of ``kind``."""
    if kind == "authors":
        return UnscaledDropout(per_batch=True), UnscaledDropout()
    if kind == "standard":
        return nn.Dropout2d(0.5), nn.Dropout(0.5)
    return nn.Identity(), nn.Identity()


class LeNetEncoder(nn.Module):
    def __init__(self, dropout: str):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.drop = _dropouts(dropout)[0]
        self.fc = nn.Linear(320, 50)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(image), 2))
        x = F.relu(F.max_pool2d(self.drop(self.conv2(x)), 2))
        return F.relu(self.fc(x.flatten(1)))


class LeNetHead(nn.Module):
    def __init__(self, classes: int, dropout: str):
        super().__init__()
        self.fc1 = nn.Linear(50, 50)
        self.drop = _dropouts(dropout)[1]
        self.fc2 = nn.Linear(50, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(features))))


class MultiLeNet(MultiTaskNet):
    """Args: tasks (image-level classification tasks on 1 x 28 x 28 inputs); dropout (``authors`` |
    ``standard`` | ``none``); head (``mlp`` | ``linear``); module docstring."""

    def __init__(self, tasks: Sequence[Task], dropout: str = "authors", head: str = "mlp"):
        super().__init__()
        if dropout not in DROPOUTS:
            raise ConfigError(f"model.dropout must be one of {DROPOUTS}, got {dropout!r}.")
        if head not in HEADS:
            raise ConfigError(f"model.head must be one of {HEADS}, got {head!r}.")
        wrong = [t.name for t in tasks if t.kind != "multiclass"]
        if wrong:
            raise ConfigError(f"MultiLeNet classifies digits (multiclass tasks); {wrong} are not multiclass.")
        self.task_names = tuple(t.name for t in tasks)
        self.encoder = LeNetEncoder(dropout)
        self.classifiers = nn.ModuleDict(
            {t.name: LeNetHead(t.num_outputs, dropout) if head == "mlp" else nn.Linear(50, t.num_outputs) for t in tasks}
        )

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        if image.shape[-3:] != (1, 28, 28):
            raise ValueError(f"MultiLeNet reads 1 x 28 x 28 images, got {tuple(image.shape[1:])}.")
        return {"features": self.encoder(image)}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return {name: self.classifiers[name](shared["features"]) for name in self._check_tasks(tasks)}

    def forward(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.heads(self.representation(image, tasks), tasks)

    def readout_layer(self, task: str) -> nn.Linear:
        """With ``head=linear``, task ``task``'s one layer on the shared features."""
        layer = self.classifiers[self._check_tasks([task])[0]]
        if not isinstance(layer, nn.Linear):
            return super().readout_layer(task)
        return layer

    def path_modules(self, task: str) -> list[nn.Module]:
        if task not in self.classifiers:
            raise KeyError(f"MultiLeNet has no task {task!r}; it has {list(self.task_names)}.")
        return [self.encoder, self.classifiers[task]]


__all__ = ["DROPOUTS", "HEADS", "MultiLeNet", "UnscaledDropout"]
