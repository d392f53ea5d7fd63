"""``mtl_baseline``: the survey's hard-parameter-sharing baseline (Vandenhende et al. 2022, Table V).

A dilated ResNet (output stride 8), or an HRNet with its four branches concatenated at stride 4
(the survey's HRNet-18 baseline), shared by all tasks; one head per task, the logits up-sampled
bilinearly to the input. ``head``: ``auto`` (default) takes the survey's choice -- DeepLabV3's ASPP
head (:class:`~medmtl.models.heads.ASPPHead`) on a ResNet, its 1x1 high-resolution head
(:class:`~medmtl.models.heads.HighResolutionHead`) on an HRNet -- and ``aspp`` / ``hrnet`` force one.
As a single-task network (``optim=stl``) it is the survey's single-task baseline of the same
backbone. The shared representation of the "-UB" strategies is the backbone's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.backbones import dense_features
from medmtl.models.heads import ASPPHead, HighResolutionHead
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task

HEADS = ("auto", "aspp", "hrnet")


class MTLBaseline(DenseSceneNet):
    """Args: tasks; backbone (a timm ResNet, resnet50 in the survey on NYUDv2, or an HRNet:
    hrnet_w18_small_v2 -- the survey's "HRNet-18" --, hrnet_w18, hrnet_tiny); aspp_width (256);
    output_stride (8); weights_path (local backbone weights); input_normalization; head
    (``auto`` | ``aspp`` | ``hrnet``)."""

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet50",
        aspp_width: int = 256,
        output_stride: int = 8,
        weights_path: str | None = None,
        input_normalization: str = "imagenet",
        head: str = "auto",
    ):
        super().__init__(tasks, input_normalization)
        if head not in HEADS:
            raise ConfigError(f"model.head must be one of {HEADS}, got {head!r}.")
        self.backbone, channels = dense_features(backbone, output_stride, weights_path)
        if head == "auto":
            head = "hrnet" if backbone.startswith("hrnet") else "aspp"
        self.heads_by_task = nn.ModuleDict(
            {t.name: ASPPHead(channels, t, aspp_width) if head == "aspp" else HighResolutionHead(channels, t) for t in tasks}
        )

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
