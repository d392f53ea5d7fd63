"""``padnet``: PAD-Net (Xu et al. 2018; survey 2.3.1), decoder-focused: initial predictions, then
multi-modal distillation, then the final predictions.

The backbone is a dilated ResNet (single scale, stride 8) or an HRNet whose four branches are
up-sampled to the finest one and concatenated (the survey's "multi-scale" PAD-Net on HRNet-18).
For every task k, an initial head (two conv3x3-BN-ReLU of ``width`` channels) gives features
F_k^i and, through a 1x1 convolution, an initial prediction that is deep-supervised with the
task's loss. The distillation (survey Eq. 2) forms

    F_k^o = F_k^i + sum_{l != k} sigmoid(W_{k,l} F_l^i) * F_l^i

with W_{k,l} a 3x3 convolution (a spatial, per-channel attention mask on task l's features), and
a final head (conv3x3-BN-ReLU, 1x1) predicts task k from F_k^o. Every initial head lies on every
task's path (through the distillation), so those are shared parameters for the strategies; a
task's distillation, initial-prediction and final layers are its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medmtl.models.backbones import dense_features
from medmtl.models.heads import conv_bn_relu, conv_head
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task


def task_features(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(in_channels, width), conv_bn_relu(width, width))


class Distillation(nn.Module):
    """F_k^o = F_k^i + sum_{l != k} sigmoid(W_{k,l} F_l^i) * F_l^i for one task k."""

    def __init__(self, task: str, tasks: Sequence[str], width: int):
        super().__init__()
        self.task = task
        self.masks = nn.ModuleDict({other: nn.Conv2d(width, width, 3, padding=1) for other in tasks if other != task})

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        out = features[self.task]
        for other, mask in self.masks.items():
            out = out + torch.sigmoid(mask(features[other])) * features[other]
        return out


class PADNet(DenseSceneNet):
    """Args: tasks; backbone (a timm ResNet, dilated, or an HRNet: hrnet_w18 / hrnet_tiny); width
    (channels of the task heads, 256); output_stride (ResNet); weights_path; input_normalization."""

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet50",
        width: int = 256,
        output_stride: int = 8,
        weights_path: str | None = None,
        input_normalization: str = "imagenet",
    ):
        super().__init__(tasks, input_normalization)
        self.backbone, in_channels = dense_features(backbone, output_stride, weights_path)
        names = [t.name for t in tasks]
        self.initial_features = nn.ModuleDict({t.name: task_features(in_channels, width) for t in tasks})
        self.initial_predictions = nn.ModuleDict({t.name: conv_head(width, t) for t in tasks})
        self.distillation = nn.ModuleDict({name: Distillation(name, names, width) for name in names})
        self.final = nn.ModuleDict({t.name: nn.Sequential(conv_bn_relu(width, width), conv_head(width, t)) for t in tasks})

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        self._input_size = tuple(image.shape[-2:])
        return {"features": self.backbone(self.normalize(image))}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        initial = {name: layer(shared["features"]) for name, layer in self.initial_features.items()}  # every task's: distilled
        self.keep_intermediate({name: [self.initial_predictions[name](initial[name])] for name in tasks}, self._input_size, tasks)
        logits = {name: self.final[name](self.distillation[name](initial)) for name in tasks}
        return self.finish(logits, self._input_size)

    def path_modules(self, task: str) -> list[nn.Module]:
        self._check_tasks([task])
        return [self.backbone, self.initial_features, self.initial_predictions[task], self.distillation[task], self.final[task]]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())
