"""The head builder every architecture uses: the right number of output channels per task kind.

A task's head ends in ``task.channels`` outputs (:attr:`medmtl.tasks.Task.channels`): one for
binary, segmentation, heatmap, depth and edge tasks, three for surface normals, ``num_outputs``
for multi-class, multi-label and semantic tasks. :func:`shape_output` gives every model the same
output shapes: ``(B,)`` or ``(B, C)`` for image-level tasks, ``(B, H, W)`` for one-channel dense
tasks and ``(B, C, H, W)`` otherwise.

- :func:`linear_head`: dropout and a linear layer on a pooled feature (image-level tasks);
- :func:`conv_head`: a 1x1 convolution on a decoded feature map (dense tasks);
- :class:`ASPPHead`: DeepLabV3's atrous spatial pyramid pooling (Chen et al. 2017) then a 3x3
  convolution and the 1x1 output convolution: the task-specific heads of the survey's
  encoder-focused networks on a dilated ResNet (Vandenhende et al. 2022, section 4.1), with the
  rates (12, 24, 36), the pooled branch's batch norm and the projection's dropout of their code;
- :class:`HighResolutionHead`: the survey's lighter head on HRNet's concatenated branches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError
from medmtl.tasks import Task


def linear_head(in_features: int, task: Task, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, task.channels))


def conv_head(in_channels: int, task: Task) -> nn.Conv2d:
    return nn.Conv2d(in_channels, task.channels, 1)


def shape_output(output: torch.Tensor, task: Task) -> torch.Tensor:
    """Drop the channel dimension of one-channel outputs: (B, 1) -> (B,), (B, 1, H, W) -> (B, H, W)."""
    if task.channels == 1:
        return output.squeeze(1)
    return output


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """DeepLabV3's atrous spatial pyramid pooling as the survey's code builds it: a 1x1 conv, three
    3x3 convs dilated at ``rates`` and an image-pooling branch (1x1 conv), each followed by batch
    norm and ReLU; concatenated, projected by a 1x1 conv-BN-ReLU and Dropout(``dropout``). The
    survey's rates are (12, 24, 36) on its output-stride-8 dilated ResNets."""

    def __init__(self, in_channels: int, width: int = 256, rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, width, 1)] + [conv_bn_relu(in_channels, width, 3, r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, width, 1))
        self.project = nn.Sequential(conv_bn_relu(width * (len(rates) + 2), width, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            raise ConfigError(
                "The ASPP head's image-pooling branch has batch norm (the survey's DeepLab head), which cannot train on one "
                "image per forward: use data.batch_size of 2 or more (4 or more with MoDo, SDMGrad and MOML, which halve "
                "each batch)."
            )
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class ASPPHead(nn.Sequential):
    """ASPP -> 3x3 conv-BN-ReLU -> 1x1 conv to ``task.channels``: the survey's ``DeepLabHead``
    (Vandenhende et al. 2022's code), rates (12, 24, 36)."""

    def __init__(self, in_channels: int, task: Task, width: int = 256, rates: Sequence[int] = (12, 24, 36)):
        super().__init__(ASPP(in_channels, width, rates), conv_bn_relu(width, width), conv_head(width, task))


def projection(in_channels: int, out_channels: int) -> nn.Sequential:
    """A residual block's identity projection: 1x1 conv (no bias) + batch norm."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


class HighResolutionHead(nn.Sequential):
    """The survey's head on HRNet's concatenated branches (its code's ``HighResolutionHead``):
    1x1 conv C -> C (with bias), batch norm, ReLU, 1x1 conv to ``task.channels``."""

    def __init__(self, in_channels: int, task: Task):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 1),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            conv_head(in_channels, task),
        )


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resizing of dense logits to the input resolution (no-op when already there)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
