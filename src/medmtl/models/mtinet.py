"""``mtinet``: MTI-Net (Vandenhende et al. 2020; survey 2.3.4), multi-scale multi-modal distillation
on an HRNet (HRNet-18 in the survey and in Hervella et al. 2024).

The backbone gives features x_s at four scales s = 3 (stride 32) ... 0 (stride 4). From the
coarsest scale to the finest:

1. feature propagation: at s < 3 the task features of scale s+1 (every task's, up-sampled) are
   concatenated to x_s, so that coarse task interactions inform finer ones;
2. initial task heads at scale s (two conv3x3-BN-ReLU with the backbone's width at that scale)
   give features F_{k,s}^i and, through a 1x1 convolution, an initial prediction of every task at
   every scale, deep-supervised with the task's loss;
3. PAD-Net's distillation at that scale (:class:`~medmtl.models.padnet.Distillation`), so that
   each task interaction is modelled with the receptive field of its scale.

Finally each task's distilled features of the four scales are up-sampled to the finest,
concatenated, and a final head (conv3x3-BN-ReLU, 1x1) predicts the task.

Simplification, stated: the original feature propagation module passes the coarser task
features through a shared bottleneck and a per-task squeeze-and-excitation before adding them to
x_s; here they are concatenated and the task heads learn the mixing. The heads are also lighter
than the authors' (plain conv-BN-ReLU instead of residual blocks), so the network has fewer
parameters than the 27 M of the survey's Table V on HRNet-18 (``metrics.json`` records ours).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.models.backbones import hrnet_features
from medmtl.models.heads import conv_bn_relu, conv_head
from medmtl.models.padnet import Distillation, task_features
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task


class MTINet(DenseSceneNet):
    """Args: tasks; backbone (hrnet_w18, hrnet_w18_small, hrnet_tiny); weights_path;
    input_normalization."""

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "hrnet_w18",
        weights_path: str | None = None,
        input_normalization: str = "imagenet",
    ):
        super().__init__(tasks, input_normalization)
        self.backbone, channels = hrnet_features(backbone, weights_path)
        names = [t.name for t in tasks]
        n = len(names)
        # scale s reads x_s and, below the coarsest scale, every task's features of scale s+1
        inputs = [channels[s] + (n * channels[s + 1] if s < 3 else 0) for s in range(4)]
        self.initial_features = nn.ModuleList(
            [nn.ModuleDict({name: task_features(inputs[s], channels[s]) for name in names}) for s in range(4)]
        )
        self.initial_predictions = nn.ModuleList(
            [nn.ModuleDict({t.name: conv_head(channels[s], t) for t in tasks}) for s in range(4)]
        )
        self.distillation = nn.ModuleList(
            [nn.ModuleDict({name: Distillation(name, names, channels[s]) for name in names}) for s in range(4)]
        )
        self.final = nn.ModuleDict(
            {t.name: nn.Sequential(conv_bn_relu(sum(channels), channels[0]), conv_head(channels[0], t)) for t in tasks}
        )

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        self._input_size = tuple(image.shape[-2:])
        return {f"x{s}": x for s, x in enumerate(self.backbone(self.normalize(image)))}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        distilled: dict[str, list[torch.Tensor]] = {name: [] for name in tasks}
        intermediate: dict[str, list[torch.Tensor]] = {name: [] for name in tasks}
        coarser = None
        for s in reversed(range(4)):
            x = shared[f"x{s}"]
            if coarser is not None:
                up = [
                    F.interpolate(coarser[name], size=x.shape[-2:], mode="bilinear", align_corners=False)
                    for name in self.task_names
                ]
                x = torch.cat([x, *up], dim=1)
            initial = {name: layer(x) for name, layer in cast(nn.ModuleDict, self.initial_features[s]).items()}
            for name in tasks:
                intermediate[name].append(cast(nn.ModuleDict, self.initial_predictions[s])[name](initial[name]))
                distilled[name].append(cast(nn.ModuleDict, self.distillation[s])[name](initial))
            coarser = initial
        self.keep_intermediate(intermediate, self._input_size, tasks)
        logits = {}
        for name in tasks:
            finest = distilled[name][-1]
            joined = torch.cat(
                [
                    F.interpolate(f, size=finest.shape[-2:], mode="bilinear", align_corners=False)
                    for f in reversed(distilled[name])
                ],
                dim=1,
            )
            logits[name] = self.final[name](joined)
        return self.finish(logits, self._input_size)

    def path_modules(self, task: str) -> list[nn.Module]:
        self._check_tasks([task])
        own = [
            m
            for s in range(4)
            for m in (cast(nn.ModuleDict, self.initial_predictions[s])[task], cast(nn.ModuleDict, self.distillation[s])[task])
        ]
        return [self.backbone, self.initial_features, *own, self.final[task]]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())
