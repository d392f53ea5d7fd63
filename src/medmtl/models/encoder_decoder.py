"""Shared encoder + shared decoder + one head per task: the shape of Pascal et al. 2022's networks.

Image-level tasks (binary, multiclass, multilabel) read the deepest encoder feature: global pool
(max in Pascal et al. 2022, ``classifier_pool = "avg"`` for a plain ResNet classifier) -> dropout ->
linear(C, outputs). Dense tasks read the decoder output: a 1x1 conv each, then up-sampled by
``dense_upsample`` when the decoder stops short of the input resolution (DeepLabV3+ decodes at
stride 4; a 1x1 conv and bilinear up-sampling commute, so this equals up-sampling the features;
corners aligned, as smp's segmentation head does). The decoder is only built, and only run,
when the model has a dense task: a classification-only model (the STL classifier) is encoder +
classifier, and ``forward(x, tasks=["glaucoma"])`` never touches the decoder, so that MTL-IO's
classification step leaves it without gradient.

Subclasses build ``self.encoder`` (image -> list of features, deepest last) and ``self.decoder``
(that list -> one map at input resolution), then call :meth:`_build_heads`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.backbones import InputNormalization
from medmtl.models.base import MultiTaskNet
from medmtl.models.heads import conv_head, linear_head, shape_output
from medmtl.tasks import Task


class EncoderDecoderNet(MultiTaskNet):
    #: input sides must be multiples of this (the encoder's total down-sampling)
    input_multiple: int = 1
    #: global pooling of the deepest feature for the image-level heads: "max" | "avg"
    classifier_pool: str = "max"
    #: the decoder's output stride (dense logits are up-sampled by it)
    dense_upsample: int = 1
    encoder: nn.Module
    decoder: nn.Module | None

    def __init__(self, input_normalization: str = "none"):
        super().__init__()
        self.input_normalization = InputNormalization(input_normalization)

    def _build_heads(self, tasks: Sequence[Task], bottleneck_channels: int, decoded_channels: int, dropout: float) -> None:
        self.task_names = tuple(t.name for t in tasks)
        dense = [t for t in tasks if t.is_dense]
        self.task_by_name = {t.name: t for t in tasks}
        self.dense_heads = nn.ModuleDict({t.name: conv_head(decoded_channels, t) for t in dense})
        self.classifiers = nn.ModuleDict({t.name: linear_head(bottleneck_channels, t, dropout) for t in tasks if not t.is_dense})

    def _apply_head_prior(self, head_prior: float | None) -> None:
        """Dense heads start at foreground probability ``head_prior``: bias = log(p / (1 - p))
        (Lin et al. 2017's prior initialisation); ``None`` keeps the biases as they are."""
        if head_prior is None:
            return
        if not 0.0 < head_prior < 1.0:
            raise ConfigError(f"head_prior must be in (0, 1), got {head_prior}.")
        for head in self.dense_heads.values():
            bias = head.bias
            assert isinstance(bias, torch.Tensor)  # conv_head's 1x1 convolution has a bias
            nn.init.constant_(bias, math.log(head_prior / (1.0 - head_prior)))

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The shared representation the heads read: the bottleneck (classifiers) and, when a
        dense task is requested, the decoder output (dense heads)."""
        tasks = self._check_tasks(tasks)
        m = self.input_multiple
        if image.shape[-1] % m or image.shape[-2] % m:
            raise ConfigError(f"{type(self).__name__} needs image sides divisible by {m}, got {tuple(image.shape[-2:])}.")
        features = self.encoder(self.input_normalization(image))
        shared = {"bottleneck": features[-1]}
        if self.decoder is not None and any(t in self.dense_heads for t in tasks):
            shared["decoded"] = self.decoder(features)
        return shared

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        tasks = self._check_tasks(tasks)
        wanted_classifiers = [t for t in tasks if t in self.classifiers]
        if wanted_classifiers:
            pool = torch.amax if self.classifier_pool == "max" else torch.mean
            bottleneck = shared["bottleneck"]
            pooled = pool(bottleneck, dim=tuple(range(2, bottleneck.dim())))  # every spatial axis (2D or 3D)
            for name in wanted_classifiers:
                outputs[name] = shape_output(self.classifiers[name](pooled), self.task_by_name[name])
        for name in (t for t in tasks if t in self.dense_heads):
            logits = self.dense_heads[name](shared["decoded"])
            if self.dense_upsample != 1:
                logits = F.interpolate(logits, scale_factor=self.dense_upsample, mode="bilinear", align_corners=True)
            outputs[name] = shape_output(logits, self.task_by_name[name])
        return outputs

    def forward(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.heads(self.representation(image, tasks), tasks)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The encoder (``optim.backbone_lr_scale`` trains it at a fraction of the learning rate)."""
        return list(self.encoder.parameters())

    def path_modules(self, task: str) -> list[nn.Module]:
        if task in self.classifiers:
            return [self.encoder, self.classifiers[task]]
        if task in self.dense_heads and self.decoder is not None:
            return [self.encoder, self.decoder, self.dense_heads[task]]
        raise KeyError(f"{type(self).__name__} has no task {task!r}; it has {list(self.task_names)}.")
