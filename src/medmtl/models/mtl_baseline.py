"""``mtl_baseline``: the survey's hard-parameter-sharing baseline (Vandenhende et al. 2022, Table V).

A dilated ResNet (output stride 8), or an HRNet with its four branches concatenated at stride 4
(the survey's HRNet-18 baseline), shared by all tasks; one ASPP head per task (DeepLabV3's head,
:class:`~medmtl.models.heads.ASPPHead`; the survey's HRNet heads are lighter), the logits
up-sampled bilinearly to the input.
As a single-task network (``optim=stl``) it is the survey's single-task baseline of the same
backbone. The shared representation of the "-UB" strategies is the backbone's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medmtl.models.backbones import dense_features
from medmtl.models.heads import ASPPHead
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task


class MTLBaseline(DenseSceneNet):
    """Args: tasks; backbone (a timm ResNet, resnet50 in the survey on NYUDv2, or an HRNet:
    hrnet_w18, hrnet_tiny); aspp_width (256);
    output_stride (8); weights_path (local backbone weights); input_normalization."""

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
        self.backbone, channels = dense_features(backbone, output_stride, weights_path)
        self.heads_by_task = nn.ModuleDict({t.name: ASPPHead(channels, t, aspp_width) for t in tasks})

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        self._input_size = tuple(image.shape[-2:])
        return {"features": self.backbone(self.normalize(image))}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        return self.finish({name: self.heads_by_task[name](shared["features"]) for name in tasks}, self._input_size)

    def path_modules(self, task: str) -> list[nn.Module]:
        return [self.backbone, self.heads_by_task[task]]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())
