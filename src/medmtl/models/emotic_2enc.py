"""``emotic_2enc``: the two-encoder network of Kosti et al. (2017, 2020), as Hervella et al. 2024
use it on EMOTIC (section 5.1.2).

Two ResNet-18 encoders (timm, global average pooling): one reads the whole image (``context``),
the other the person's body box (``body``). Their features are concatenated (512 + 512) and fused
by a fully connected layer (``fusion_width`` 256, batch norm, ReLU, dropout), on which every task
has a linear head with ``task.channels`` outputs (26 category logits, 3 dimensions, or one logit
per category in the 26-task setting). Everything but the heads is shared, so the "-UB"
strategies' representation is the fused feature.

Weights (Hervella et al. after Kosti et al.: the context encoder pre-trained on Places, the body
encoder on ImageNet) load from local files only: ``context_weights`` and ``body_weights``, each a
torchvision/timm ResNet state dict (``module.`` prefixes of data-parallel checkpoints, such as
the Places365 release, and the classifier are dropped). An encoder without a file starts from
scratch, and the log says so once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.backbones import InputNormalization
from medmtl.models.base import MultiTaskNet
from medmtl.models.heads import linear_head, shape_output
from medmtl.models.weights import load_state_dict, resolve_weights_file
from medmtl.tasks import Task

log = logging.getLogger(__name__)


def resnet_encoder(name: str, weights: str | None, option: str, role: str) -> tuple[nn.Module, int]:
    """A timm ResNet with global average pooling and no classifier; weights from a local file."""
    import timm

    encoder: Any = timm.create_model(name, pretrained=False, num_classes=0)
    if weights:
        path = resolve_weights_file(weights, option=f"{option}=null")
        state = {k.removeprefix("module."): v for k, v in load_state_dict(path).items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"{path} does not fit a {name} {role} encoder: {len(missing)} weights missing (e.g. "
                f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})."
            )
    else:
        log.warning("EMOTIC %s encoder starts from scratch (%s is not set; the paper pre-trains it).", role, option)
    return encoder, int(encoder.num_features)


class EmoticTwoEncoder(MultiTaskNet):
    """Args: tasks (image-level); backbone (timm ResNet: resnet18; test_resnet for tests);
    context_weights, body_weights (local files, null = scratch); fusion_width (256); dropout (0.5);
    input_normalization (``imagenet`` | ``none``)."""

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet18",
        context_weights: str | None = None,
        body_weights: str | None = None,
        fusion_width: int = 256,
        dropout: float = 0.5,
        input_normalization: str = "imagenet",
    ):
        super().__init__()
        dense = [t.name for t in tasks if t.is_dense]
        if dense:
            raise ConfigError(f"EmoticTwoEncoder predicts one value set per person; the pixel tasks {dense} need another model.")
        self.task_names = tuple(t.name for t in tasks)
        self.task_by_name = {t.name: t for t in tasks}
        self.normalize = InputNormalization(input_normalization)
        self.context_encoder, context_features = resnet_encoder(backbone, context_weights, "model.context_weights", "context")
        self.body_encoder, body_features = resnet_encoder(backbone, body_weights, "model.body_weights", "body")
        self.fusion = nn.Sequential(
            nn.Linear(context_features + body_features, fusion_width),
            nn.BatchNorm1d(fusion_width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.heads_by_task = nn.ModuleDict({t.name: linear_head(fusion_width, t) for t in tasks})

    def representation(
        self, context: torch.Tensor, body: torch.Tensor, tasks: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        features = torch.cat([self.context_encoder(self.normalize(context)), self.body_encoder(self.normalize(body))], dim=1)
        return {"fused": self.fusion(features)}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return {
            name: shape_output(self.heads_by_task[name](shared["fused"]), self.task_by_name[name])
            for name in self._check_tasks(tasks)
        }

    def forward(self, context: torch.Tensor, body: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.heads(self.representation(context, body, tasks), tasks)

    def readout_layer(self, task: str) -> nn.Linear:
        """Task ``task``'s linear layer on the fused vector (its head's dropout is 0)."""
        self._check_tasks([task])
        head = cast(nn.Sequential, self.heads_by_task[task])
        return cast(nn.Linear, head[1])

    def path_modules(self, task: str) -> list[nn.Module]:
        if task not in self.heads_by_task:
            raise KeyError(f"EmoticTwoEncoder has no task {task!r}; it has {list(self.task_names)}.")
        return [self.context_encoder, self.body_encoder, self.fusion, self.heads_by_task[task]]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [*self.context_encoder.parameters(), *self.body_encoder.parameters()]
