"""``mtinet``: MTI-Net (Vandenhende et al. 2020; survey 2.3.4), multi-scale multi-modal distillation
on an HRNet (the survey's HRNet-18, HRNet-W18-small-v2; Hervella et al. 2024's full HRNet-W18), as the
survey's code builds it.

The backbone gives features x_s at four scales s = 3 (stride 32) ... 0 (stride 4), c_s channels.
From the coarsest scale to the finest:

1. initial task prediction: per task k, a refinement of two residual basic blocks (the first with a
   1x1 conv + BN projection when its input is wider than c_s) gives F_{k,s}, and a 1x1 convolution
   the task's initial prediction at that scale, deep-supervised with its loss. At s < 3 the input
   of task k is x_s concatenated with that task's propagated features of scale s+1, up-sampled;
2. feature propagation (FPM, at s = 3, 2, 1): the T tasks' F_{k,s} are concatenated (T c_s
   channels), a non-linear function (a basic block down to T c_s / 4 with a projection, a basic
   block, a 1x1 conv back to T c_s) followed by a softmax gives an attention mask that weights the
   concatenation; a basic block (with projection) reduces it to c_s, and per task a
   squeeze-and-excitation (reduction 16) of that shared map plus the task's own F_{k,s} is what
   propagates to the next finer scale. The paper describes the softmax as taken over the tasks;
   the authors' code views the concatenation as (B, T c_s / T, T, H, W) and so takes it over groups
   of T consecutive channels, which mostly belong to one task. The code gave the paper's numbers:
   ``attention_grouping: code`` (default) is it, ``tasks`` is the paper's description (channel j of
   every task in one softmax);
3. distillation at every scale: F_{k,s} + sum_{l != k} SA_{k,l}(F_{l,s}), SA(F) = conv3x3(F) *
   sigmoid(conv3x3(F)) (the survey code's spatial-attention block, both convolutions without bias).

Finally each task's distilled features of the four scales go through the survey's HRNet head
(up-sampled to the finest scale and concatenated, 1x1 conv, BN, ReLU, 1x1 conv:
:class:`~medmtl.models.heads.HighResolutionHead`). Every block above is the authors'; the
parameter counts per block are tested against counts written from this description. One
deviation, for the test-sized ``hrnet_tiny`` only: the squeeze-and-excitation keeps at least one
hidden unit where c_s < 16 (the authors' c_s // 16 would be 0).

An auxiliary task (``Task.auxiliary``: the survey's normals and edges on NYUDv2, its code's
``AUXILARY_TASKS``) is refined, predicted and propagated at every scale like the others, but has no
distillation and no final head: its output is its initial prediction at the finest scale, the
coarser ones deep-supervised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from medmtl.errors import ConfigError
from medmtl.models.backbones import hrnet_features
from medmtl.models.heads import HighResolutionHead, conv_head, projection
from medmtl.models.padnet import AttentionDistillation
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task

GROUPINGS = ("code", "tasks")


def residual_block(in_channels: int, out_channels: int) -> BasicBlock:
    """A ResNet basic block, with a 1x1 conv + BN projection of the identity when the widths differ."""
    if in_channels == out_channels:
        return BasicBlock(in_channels, out_channels)
    return BasicBlock(in_channels, out_channels, downsample=projection(in_channels, out_channels))


class SqueezeExcitation(nn.Module):
    """x * sigmoid(W_2 relu(W_1 mean_{h,w} x)), W_1: C -> max(1, C // reduction) (with biases)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.squeeze(x.mean(dim=(2, 3)))[:, :, None, None]


class FeaturePropagation(nn.Module):
    """MTI-Net's feature propagation module at one scale (module docstring, step 2)."""

    def __init__(self, tasks: Sequence[str], channels: int, attention_grouping: str = "code"):
        super().__init__()
        if attention_grouping not in GROUPINGS:
            raise ConfigError(f"model.attention_grouping must be one of {GROUPINGS}, got {attention_grouping!r}.")
        self.tasks, self.grouping = list(tasks), attention_grouping
        shared = len(self.tasks) * channels
        self.non_linear = nn.Sequential(
            residual_block(shared, shared // 4), residual_block(shared // 4, shared // 4), nn.Conv2d(shared // 4, shared, 1)
        )
        self.reduction = residual_block(shared, channels)
        self.excitation = nn.ModuleDict({task: SqueezeExcitation(channels) for task in self.tasks})

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        concat = torch.cat([features[task] for task in self.tasks], dim=1)
        b, c, h, w = concat.shape
        n = len(self.tasks)
        if self.grouping == "code":  # the authors' view: groups of n consecutive channels
            mask = F.softmax(self.non_linear(concat).view(b, c // n, n, h, w), dim=2).view(b, c, h, w)
        else:  # channel j of every task in one softmax
            mask = F.softmax(self.non_linear(concat).view(b, n, c // n, h, w), dim=1).view(b, c, h, w)
        shared = self.reduction(mask * concat)
        return {task: self.excitation[task](shared) + features[task] for task in self.tasks}


class MTINet(DenseSceneNet):
    """Args: tasks; backbone (hrnet_w18_small_v2, hrnet_w18, hrnet_w18_small, hrnet_tiny);
    weights_path; input_normalization; attention_grouping (the FPM's softmax: ``code`` | ``tasks``,
    module docstring)."""

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "hrnet_w18",
        weights_path: str | None = None,
        input_normalization: str = "imagenet",
        attention_grouping: str = "code",
    ):
        super().__init__(tasks, input_normalization)
        self.backbone, channels = hrnet_features(backbone, weights_path)
        names = [t.name for t in tasks]
        inputs = [channels[s] + (channels[s + 1] if s < 3 else 0) for s in range(4)]
        self.refinement = nn.ModuleList(
            [
                nn.ModuleDict(
                    {
                        name: nn.Sequential(residual_block(inputs[s], channels[s]), residual_block(channels[s], channels[s]))
                        for name in names
                    }
                )
                for s in range(4)
            ]
        )
        self.propagation = nn.ModuleList(
            [FeaturePropagation(names, channels[s], attention_grouping) for s in range(1, 4)]
        )  # scales 1, 2, 3
        self.initial_predictions = nn.ModuleList(
            [nn.ModuleDict({t.name: conv_head(channels[s], t) for t in tasks}) for s in range(4)]
        )
        final = [t for t in tasks if not t.auxiliary]
        self.distillation = nn.ModuleList(
            [nn.ModuleDict({t.name: AttentionDistillation(t.name, names, channels[s]) for t in final}) for s in range(4)]
        )
        self.final = nn.ModuleDict({t.name: HighResolutionHead(sum(channels), t) for t in final})

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        self._input_size = tuple(image.shape[-2:])
        return {f"x{s}": x for s, x in enumerate(self.backbone(self.normalize(image)))}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        distilled: dict[str, list[torch.Tensor]] = {name: [] for name in tasks}
        intermediate: dict[str, list[torch.Tensor]] = {name: [] for name in tasks}
        propagated: dict[str, torch.Tensor] | None = None
        for s in reversed(range(4)):
            x = shared[f"x{s}"]
            refine = cast(nn.ModuleDict, self.refinement[s])
            if propagated is None:
                features = {name: block(x) for name, block in refine.items()}
            else:
                features = {
                    name: block(torch.cat([x, F.interpolate(propagated[name], size=x.shape[-2:], mode="bilinear")], dim=1))
                    for name, block in refine.items()
                }
            for name in tasks:
                intermediate[name].append(cast(nn.ModuleDict, self.initial_predictions[s])[name](features[name]))
                if name in self.final:
                    distilled[name].append(cast(nn.ModuleDict, self.distillation[s])[name](features))
            if s > 0:
                propagated = cast(FeaturePropagation, self.propagation[s - 1])(features)
        finest_initial = {name: intermediate[name].pop() for name in tasks if name not in self.final}  # auxiliary
        self.keep_intermediate(intermediate, self._input_size, tasks)
        logits = {name: self._final(name, distilled[name]) if name in self.final else finest_initial[name] for name in tasks}
        return self.finish(logits, self._input_size)

    def _final(self, name: str, distilled: list[torch.Tensor]) -> torch.Tensor:
        """The HRNet head on the task's distilled features of the four scales (coarsest first in ``distilled``)."""
        scales = list(reversed(distilled))  # finest first
        finest = scales[0].shape[-2:]
        joined = torch.cat([scales[0], *(F.interpolate(f, size=finest, mode="bilinear") for f in scales[1:])], dim=1)
        return self.final[name](joined)

    def path_modules(self, task: str) -> list[nn.Module]:
        self._check_tasks([task])
        own: list[nn.Module] = [cast(nn.ModuleDict, self.initial_predictions[s])[task] for s in range(4)]
        if task not in self.final:  # auxiliary
            return [self.backbone, self.refinement, self.propagation, *own]
        own += [cast(nn.ModuleDict, self.distillation[s])[task] for s in range(4)]
        return [self.backbone, self.refinement, self.propagation, *own, self.final[task]]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())
