"""``padnet``: PAD-Net (Xu et al. 2018; survey 2.3.1), decoder-focused: initial predictions, then
multi-modal distillation, then the final predictions, as the survey's code builds it.

The backbone is a dilated ResNet (single scale, stride 8) or an HRNet whose four branches are
up-sampled to the finest one, concatenated and fused by a 1x1 conv-BN-ReLU of the same width (the
survey code's ``fuse_hrnet``, its "multi-scale" PAD-Net on HRNet-18). For every task k, an initial
head (two ResNet bottlenecks to ``width`` channels, the first with a 1x1 conv + BN projection)
gives features F_k^i and, through a 1x1 convolution, an initial prediction that is deep-supervised
with the task's loss. The distillation (survey Eq. 2, as its code computes it) forms

    F_k^o = F_k^i + sum_{l != k} conv3x3(F_l^i) * sigmoid(conv3x3'(F_l^i))

(a spatial attention on task l's features, both convolutions without bias), and a final head (two
bottlenecks, a 1x1 convolution) predicts task k from F_k^o. Every initial head lies on every task's
path (through the distillation), so those are shared parameters for the strategies; a task's
distillation, initial-prediction and final layers are its own. With the code's weights copied in,
the outputs equal the code's (checked in float64); the blocks' parameter counts are tested.

An auxiliary task (``Task.auxiliary``: the survey's normals and edges on NYUDv2, its code's
``AUXILARY_TASKS``) has its initial head and prediction, and its features enter every other task's
distillation, but it has no distillation and no final head: its output is its initial prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from medmtl.errors import ConfigError
from medmtl.models.backbones import dense_features
from medmtl.models.heads import conv_head, projection
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task


def bottleneck_pair(in_channels: int, width: int) -> nn.Sequential:
    """Two ResNet bottlenecks (width / 4 inner channels, expansion 4) to ``width`` channels, the
    first with a 1x1 conv + BN projection of the identity when ``in_channels`` differs."""
    shortcut = projection(in_channels, width) if in_channels != width else None
    return nn.Sequential(Bottleneck(in_channels, width // 4, downsample=shortcut), Bottleneck(width, width // 4))


class SpatialAttention(nn.Module):
    """conv3x3(F) * sigmoid(conv3x3'(F)), both without bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.attention = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.sigmoid(self.attention(x))


class AttentionDistillation(nn.Module):
    """F_k + sum_{l != k} SA_{k,l}(F_l) for one task k (module docstring, step 3)."""

    def __init__(self, task: str, tasks: Sequence[str], channels: int):
        super().__init__()
        self.task = task
        self.attention = nn.ModuleDict({other: SpatialAttention(channels) for other in tasks if other != task})

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        out = features[self.task]
        for other, block in self.attention.items():
            out = out + block(features[other])
        return out


class PADNet(DenseSceneNet):
    """Args: tasks; backbone (a timm ResNet, dilated, or an HRNet: hrnet_w18_small_v2 / hrnet_w18 /
    hrnet_tiny); width (channels of the task heads, 256, a multiple of 4); output_stride (ResNet);
    weights_path; input_normalization."""

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
        if width % 4:
            raise ConfigError(f"model.width must be a multiple of 4 (the bottlenecks' inner width is width / 4), got {width}.")
        features, in_channels = dense_features(backbone, output_stride, weights_path)
        if backbone.startswith("hrnet"):  # the survey code's fuse of the concatenated branches
            fuse = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.BatchNorm2d(in_channels), nn.ReLU())
            features = nn.Sequential(features, fuse)
        self.backbone = features
        names = [t.name for t in tasks]
        final = [t for t in tasks if not t.auxiliary]
        self.initial_features = nn.ModuleDict({t.name: bottleneck_pair(in_channels, width) for t in tasks})
        self.initial_predictions = nn.ModuleDict({t.name: conv_head(width, t) for t in tasks})
        self.distillation = nn.ModuleDict({t.name: AttentionDistillation(t.name, names, width) for t in final})
        self.final = nn.ModuleDict({t.name: nn.Sequential(bottleneck_pair(width, width), conv_head(width, t)) for t in final})

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        self._input_size = tuple(image.shape[-2:])
        return {"features": self.backbone(self.normalize(image))}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        initial = {name: layer(shared["features"]) for name, layer in self.initial_features.items()}  # every task's: distilled
        predictions = {name: self.initial_predictions[name](initial[name]) for name in tasks}
        distilled = [name for name in tasks if name in self.final]  # an auxiliary task's output is its initial prediction
        self.keep_intermediate({name: [predictions[name]] for name in distilled}, self._input_size, tasks)
        logits = {name: self.final[name](self.distillation[name](initial)) for name in distilled}
        logits = {name: logits.get(name, predictions[name]) for name in tasks}
        return self.finish(logits, self._input_size)

    def path_modules(self, task: str) -> list[nn.Module]:
        self._check_tasks([task])
        if task not in self.final:  # auxiliary
            return [self.backbone, self.initial_features, self.initial_predictions[task]]
        return [self.backbone, self.initial_features, self.initial_predictions[task], self.distillation[task], self.final[task]]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())
