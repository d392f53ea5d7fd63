"""Soft parameter sharing: one dilated ResNet per task, fused after each of its four stages.

- ``cross_stitch`` (Misra et al. 2016; survey 2.2.1): per channel c, the fused activation of task
  k is x~_k = sum_l alpha_{k,l,c} x_l, with learnable alpha initialised to 0.9 on the task's own
  network and 0.1 on each other one (the survey's code), after each of the four stages.
- ``nddr_cnn`` (Gao et al. 2019; survey 2.2.2): the T activations are concatenated and each task
  gets a 1x1 convolution from T C to C channels, batch norm (momentum 0.05, as the NDDR-CNN and
  survey code) and ReLU; the convolution is initialised to 0.9 I on the task's own channels and
  0.1 I on each other task's (the "diagonal" initialisation), so it starts as the cross-stitch
  unit. As in the survey's code there is one unit more than cross-stitch's: after the stem's
  convolution (64 channels, before its max pool), then after each of the four stages.

Each task ends with an ASPP head on its fused stage-4 activation; logits are up-sampled to the
input. These placements reproduce the survey's parameter counts on ResNet-50 with two tasks
(Table V: 80 M for cross-stitch, 102 M for NDDR-CNN). The parameter count grows linearly with T. Every task's loss
depends on every network and on the fusion units (they are the shared parameters); a task's own
parameters are its head. The "-UB" strategies' shared representation is the fused stage-4
activation of each task.
The survey pre-trains the single-task networks before stitching; here every task's network starts
from the same (ImageNet or random) backbone weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from medmtl.models.backbones import resnet_stages
from medmtl.models.heads import ASPPHead
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task


class CrossStitchUnit(nn.Module):
    def __init__(self, n_tasks: int, channels: int, own: float = 0.9, other: float = 0.1):
        super().__init__()
        alpha = torch.full((n_tasks, n_tasks, channels), other)
        alpha[range(n_tasks), range(n_tasks)] = own if n_tasks > 1 else 1.0
        self.alpha = nn.Parameter(alpha)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        stacked = torch.stack(features, dim=1)  # (B, T, C, H, W)
        mixed = torch.einsum("klc,blchw->bkchw", self.alpha, stacked)
        return list(mixed.unbind(dim=1))


class NDDRUnit(nn.Module):
    def __init__(self, n_tasks: int, channels: int, own: float = 0.9, other: float = 0.1):
        super().__init__()
        self.fuse = nn.ModuleList()
        for k in range(n_tasks):
            conv = nn.Conv2d(n_tasks * channels, channels, 1, bias=False)
            weight = torch.zeros(channels, n_tasks * channels)
            for source in range(n_tasks):
                scale = own if source == k or n_tasks == 1 else other
                weight[:, source * channels : (source + 1) * channels] = torch.eye(channels) * scale
            conv.weight.data.copy_(weight[:, :, None, None])
            self.fuse.append(nn.Sequential(conv, nn.BatchNorm2d(channels, momentum=0.05), nn.ReLU(inplace=True)))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        joined = torch.cat(features, dim=1)
        return [fuse(joined) for fuse in self.fuse]


def split_stem(stages: nn.ModuleList, channels: list[int]) -> tuple[nn.ModuleList, list[int]]:
    """Five stages from the four of :func:`~medmtl.models.backbones.resnet_stages`: the stem's
    conv-BN-ReLU, then its max pool with the first residual stage, then the other three."""
    first = cast(nn.Sequential, stages[0])
    stem, layer1 = cast(nn.Sequential, first[0]), first[1]
    conv, pool = nn.Sequential(*list(stem)[:3]), stem[3]
    stem_channels = cast(nn.BatchNorm2d, stem[1]).num_features
    return nn.ModuleList([conv, nn.Sequential(pool, layer1), *list(stages)[1:]]), [stem_channels, *channels]


class SoftSharingNet(DenseSceneNet):
    """Args: tasks; backbone (timm ResNet); aspp_width; output_stride; weights_path;
    input_normalization. Subclasses choose the fusion unit."""

    unit: type[nn.Module] = CrossStitchUnit
    #: a unit after the stem's convolution too (before its max pool), as NDDR-CNN in the survey's code
    stem_unit: bool = False

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet50",
        aspp_width: int = 256,
        output_stride: int = 8,
        weights_path: str | None = None,
        input_normalization: str = "imagenet",
    ):
        super().__init__(tasks, input_normalization)
        networks: dict[str, nn.Module] = {}
        channels: list[int] = []
        for task in tasks:
            stages, channels = resnet_stages(backbone, output_stride, weights_path)
            if self.stem_unit:
                stages, channels = split_stem(stages, channels)
            networks[task.name] = stages
        self.networks = nn.ModuleDict(networks)
        self.units = nn.ModuleList([self.unit(len(tasks), c) for c in channels])
        self.heads_by_task = nn.ModuleDict({t.name: ASPPHead(channels[-1], t, aspp_width) for t in tasks})

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The fused stage-4 activations of every task (all tasks' networks are needed for any)."""
        self._input_size = tuple(image.shape[-2:])
        x = self.normalize(image)
        features = [x] * len(self.task_names)
        for stage, unit in enumerate(self.units):
            features = unit([cast(nn.ModuleList, self.networks[name])[stage](f) for name, f in zip(self.task_names, features)])
        return dict(zip(self.task_names, features))

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        logits = {name: self.heads_by_task[name](shared[name]) for name in tasks}
        return self.finish(logits, self._input_size)

    def path_modules(self, task: str) -> list[nn.Module]:
        self._check_tasks([task])
        return [self.networks, self.units, self.heads_by_task[task]]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.networks.parameters())

    def fusion_parameters(self) -> list[nn.Parameter]:
        return list(self.units.parameters())


class CrossStitchNet(SoftSharingNet):
    """``cross_stitch`` (see the module docstring)."""

    unit = CrossStitchUnit


class NDDRCNN(SoftSharingNet):
    """``nddr_cnn`` (see the module docstring)."""

    unit = NDDRUnit
    stem_unit = True
