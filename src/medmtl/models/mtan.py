"""``mtan``: the Multi-Task Attention Network on a dilated ResNet (Liu et al. 2019; survey 2.2.3), as
Hervella et al. 2024 (ResNet-18) and Vandenhende et al. 2022 (ResNet-50) use it.

A shared ResNet extracts a general feature pool; each task selects from it with soft attention at
every stage. For stage j, with u_j the output of the stage's blocks but the last and p_j the
stage output (after its last block):

    mask_kj = g_kj(u_1)                          (j = 1)
    mask_kj = g_kj([u_j, f_{j-1}(a_{k,j-1})])     (j > 1, channel concatenation)
    a_kj = mask_kj * p_j

with g_kj a task's attention layer (1x1 conv to C/4, BN, ReLU, 1x1 conv to C, BN, sigmoid) and
f_j a residual bottleneck shared by the tasks that carries the attended features of stage j to
the width of stage j+1 (max-pooled 2x2 where the next stage halves the resolution). Each task's
ASPP head reads a_k4. Only the attention layers and the heads are task-specific, so the network
grows slowly with T (survey Table V: 72 M parameters on ResNet-50 with two tasks).

The shared representation of the "-UB" strategies is the shared backbone's (u_j, p_j).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.models.backbones import resnet_stages
from medmtl.models.heads import ASPPHead, projection
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task


def attention_layer(in_channels: int, channels: int) -> nn.Sequential:
    middle = max(1, channels // 4)
    return nn.Sequential(
        nn.Conv2d(in_channels, middle, 1),
        nn.BatchNorm2d(middle),
        nn.ReLU(inplace=True),
        nn.Conv2d(middle, channels, 1),
        nn.BatchNorm2d(channels),
        nn.Sigmoid(),
    )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (width out/4) with a 1x1 projection shortcut: the attended-feature carrier f_j."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        middle = max(1, out_channels // 4)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, middle, 1, bias=False),
            nn.BatchNorm2d(middle),
            nn.ReLU(inplace=True),
            nn.Conv2d(middle, middle, 3, padding=1, bias=False),
            nn.BatchNorm2d(middle),
            nn.ReLU(inplace=True),
            nn.Conv2d(middle, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = projection(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class MTAN(DenseSceneNet):
    """Args: tasks; backbone (timm ResNet: resnet18 in Hervella et al. 2024, resnet50 in the
    survey); aspp_width; output_stride; weights_path; input_normalization."""

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet18",
        aspp_width: int = 256,
        output_stride: int = 8,
        weights_path: str | None = None,
        input_normalization: str = "imagenet",
    ):
        super().__init__(tasks, input_normalization)
        stages, channels = resnet_stages(backbone, output_stride, weights_path)
        # each stage split into "all blocks but the last" (u) and "the last block" (p)
        first = cast(nn.Sequential, stages[0])
        self.stem = first[0]
        layers = [first[1], *stages[1:]]
        self.stage_bodies = nn.ModuleList([cast(nn.Sequential, layer)[:-1] for layer in layers])
        self.stage_tails = nn.ModuleList([cast(nn.Sequential, layer)[-1] for layer in layers])
        body_channels = [self._body_channels(layer, c) for layer, c in zip(layers, channels)]
        self.attention = nn.ModuleDict(
            {
                t.name: nn.ModuleList(
                    [attention_layer(body_channels[0], channels[0])]
                    + [attention_layer(body_channels[j] + channels[j], channels[j]) for j in range(1, 4)]
                )
                for t in tasks
            }
        )
        self.carriers = nn.ModuleList([Bottleneck(channels[j], channels[j + 1]) for j in range(3)])
        self.heads_by_task = nn.ModuleDict({t.name: ASPPHead(channels[-1], t, aspp_width) for t in tasks})

    @staticmethod
    def _body_channels(layer: nn.Sequential, channels: int) -> int:
        """Output channels of a stage without its last block (its input width when it has one block)."""
        if len(layer) > 1:
            return channels
        first = next(m for m in layer[0].modules() if isinstance(m, nn.Conv2d))
        return first.in_channels

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        self._input_size = tuple(image.shape[-2:])
        x = self.stem(self.normalize(image))
        shared = {}
        for j, (body, tail) in enumerate(zip(self.stage_bodies, self.stage_tails)):
            u = body(x)
            x = tail(u)
            if u.shape[-2:] != x.shape[-2:]:  # a one-block stage whose block strides: u is its input
                u = F.adaptive_avg_pool2d(u, x.shape[-2:])
            shared[f"u{j}"], shared[f"p{j}"] = u, x
        return shared

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        logits = {}
        for name in tasks:
            attended = None
            for j, layer in enumerate(cast(nn.ModuleList, self.attention[name])):
                u, p = shared[f"u{j}"], shared[f"p{j}"]
                if attended is None:
                    mask = layer(u)
                else:
                    carried = self.carriers[j - 1](attended)
                    if carried.shape[-2:] != u.shape[-2:]:
                        carried = F.adaptive_max_pool2d(carried, u.shape[-2:])
                    mask = layer(torch.cat([u, carried], dim=1))
                attended = mask * p
            logits[name] = self.heads_by_task[name](attended)
        return self.finish(logits, self._input_size)

    def path_modules(self, task: str) -> list[nn.Module]:
        self._check_tasks([task])
        return [self.stem, self.stage_bodies, self.stage_tails, self.carriers, self.attention[task], self.heads_by_task[task]]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.stem, self.stage_bodies, self.stage_tails) for p in m.parameters()]
