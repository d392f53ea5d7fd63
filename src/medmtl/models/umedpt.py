"""UMedPT-style multi-task network (Schafer et al. 2024; docs/methods.md).

- Shared encoder: any timm backbone with ``features_only`` (ResNet-50 or Swin-T in Schafer et al. 2024;
  timm's tiny ``test_resnet`` in tests), built without downloading anything.
- Classification tasks: one linear layer each on the pooled embedding (global average pool of
  the deepest feature map); ``num_outputs`` logits.
- Segmentation tasks: a shared pixel-dense decoder (U-Net style: from the deepest feature map,
  up-sample x2, concatenate the next shallower map, conv3x3-norm-ReLU, down to the shallowest
  map), then one 1x1 conv per task and a bilinear up-sampling to the input size.
- 3D tasks (``metadata["is_3d"]``): the input is (B, D, 3, H, W); every slice is embedded by the
  same encoder and a learned weighted average over the D slice embeddings (softmax of a linear
  score per slice, a multiple-instance head of the task) gives the volume embedding.
- ``norm``: the shared blocks' normalisation. ``layernorm_noaffine`` (default, Schafer et al. 2024's choice:
  batch statistics mix datasets and tasks) replaces every ``BatchNorm2d`` of the encoder (and the
  decoder's norms) by a layer norm over (C, H, W) without trainable parameters
  (``GroupNorm(1, C, affine=False)``); ``affine`` keeps trainable scale and shift; ``batchnorm``
  leaves the encoder as timm builds it. Encoders whose batch norm is fused with the activation
  (timm's ``BatchNormAct2d``) are refused for the replacement rather than silently losing the
  activation. Transformer encoders (Swin) have layer norms already: ``layernorm_noaffine`` drops
  their scale and shift too (Schafer et al. 2024 use layer norms without parameters in the Swin
  encoder; its trainable ones are the "UMedPT-affine" ablation, ``affine`` here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.backbones import timm_weights
from medmtl.models.base import MultiTaskNet
from medmtl.models.heads import conv_head, shape_output, upsample_to
from medmtl.tasks import Task

NORMS = ("layernorm_noaffine", "affine", "batchnorm")


def make_norm(channels: int, norm: str) -> nn.Module:
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(1, channels, affine=norm == "affine")


def replace_norms(module: nn.Module, norm: str) -> int:
    """Swap every plain ``BatchNorm2d`` below ``module`` for :func:`make_norm`, and with
    ``layernorm_noaffine`` every ``LayerNorm`` for one without scale and shift; return how many."""
    replaced = 0
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, make_norm(child.num_features, norm))
            replaced += 1
        elif isinstance(child, nn.LayerNorm) and norm == "layernorm_noaffine":
            if child.elementwise_affine:  # in place, so that subclasses (channels-first variants) keep their forward
                child.register_parameter("weight", None)
                child.register_parameter("bias", None)
                child.elementwise_affine = False
                replaced += 1
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"norm={norm!r} cannot replace {type(child).__name__} (batch norm fused with "
                "its activation); choose an encoder with plain BatchNorm2d, or norm=batchnorm."
            )
        else:
            replaced += replace_norms(child, norm)
    return replaced


class PixelDecoder(nn.Module):
    """U-Net-style decoder over the encoder's feature pyramid (deepest last)."""

    def __init__(self, channels: Sequence[int], width: int, norm: str):
        super().__init__()
        self.blocks = nn.ModuleList()
        incoming = channels[-1]
        for skip in reversed(channels[:-1]):
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(incoming + skip, width, 3, padding=1, bias=False), make_norm(width, norm), nn.ReLU(inplace=True)
                )
            )
            incoming = width
        self.out_channels = incoming

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x


class SliceAttentionPool(nn.Module):
    """Volume embedding = sum_d a_d e_d with a = softmax_d(w . e_d + b): a learned weighted average."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:  # (B, D, E) -> (B, E)
        weights = torch.softmax(self.score(slices).squeeze(-1), dim=1)
        return (weights.unsqueeze(-1) * slices).sum(dim=1)


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, task: Task, volumetric: bool):
        super().__init__()
        self.task = task
        self.pool = SliceAttentionPool(dim) if volumetric else None
        self.linear = nn.Linear(dim, task.channels)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            embedding = self.pool(embedding)
        return shape_output(self.linear(embedding), self.task)


class UMedPT(MultiTaskNet):
    """Args:
    tasks: the task set (image-level kinds get a linear head, dense kinds the shared decoder).
    backbone: a timm model name (``resnet50``, ``swin_tiny_patch4_window7_224``, ``test_resnet``).
    norm: ``layernorm_noaffine`` | ``affine`` | ``batchnorm`` (see the module docstring).
    decoder_width: channels of the decoder blocks.
    weights_path: a local timm/torch state dict for the encoder (nothing is downloaded).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet50",
        norm: str = "layernorm_noaffine",
        decoder_width: int = 64,
        weights_path: str | None = None,
    ):
        super().__init__()
        import timm

        if norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {NORMS}, got {norm!r}.")
        self.task_names = tuple(t.name for t in tasks)
        encoder: Any = timm.create_model(backbone, features_only=True, **timm_weights(weights_path))
        if norm != "batchnorm":
            replace_norms(encoder, norm)
        self.encoder = encoder
        channels = encoder.feature_info.channels()
        dense = [t for t in tasks if t.is_dense]
        decoder = PixelDecoder(channels, decoder_width, norm) if dense else None
        self.decoder = decoder
        self.task_by_name = {t.name: t for t in tasks}
        self.dense_heads = nn.ModuleDict({t.name: conv_head(decoder.out_channels, t) for t in dense} if decoder else {})
        self.classifiers = nn.ModuleDict(
            {t.name: ClassificationHead(channels[-1], t, bool(t.metadata.get("is_3d"))) for t in tasks if not t.is_dense}
        )
        self.volumetric = {t.name for t in tasks if t.metadata.get("is_3d")}
        if self.volumetric & {t.name for t in dense}:
            raise ConfigError("3D segmentation tasks are not supported (3D volumes are embedded slice by slice).")

    def _features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps as (B, C, H, W) (timm's Swin gives them channels-last)."""
        features = self.encoder(image)
        if str(getattr(self.encoder, "output_fmt", "NCHW")).endswith("NHWC"):
            features = [f.permute(0, 3, 1, 2) for f in features]
        return features

    def _embed(self, image: torch.Tensor) -> torch.Tensor:
        return self._features(image)[-1].mean(dim=(-2, -1))

    def forward(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        outputs: dict[str, torch.Tensor] = {}
        if image.dim() == 5:  # (B, D, 3, H, W): a batch of volumes, embedded slice by slice
            b, d = image.shape[:2]
            slices = self._embed(image.flatten(0, 1)).unflatten(0, (b, d))
            for name in tasks:
                if name not in self.volumetric:
                    raise ConfigError(f"Task {name!r} takes 2D images; this batch holds 3D volumes.")
                outputs[name] = self.classifiers[name](slices)
            return outputs
        features = self._features(image)
        embedding = features[-1].mean(dim=(-2, -1))
        decoded = self.decoder(features) if self.decoder is not None and any(t in self.dense_heads for t in tasks) else None
        for name in tasks:
            if name in self.volumetric:
                raise ConfigError(f"Task {name!r} takes 3D volumes (B, D, 3, H, W); this batch holds 2D images.")
            if name in self.dense_heads:
                logits = self.dense_heads[name](decoded)
                outputs[name] = shape_output(upsample_to(logits, image.shape[-2:]), self.task_by_name[name])
            else:
                outputs[name] = self.classifiers[name](embedding)
        return outputs

    def path_modules(self, task: str) -> list[nn.Module]:
        if task in self.classifiers:
            return [self.encoder, self.classifiers[task]]
        if task in self.dense_heads and self.decoder is not None:
            return [self.encoder, self.decoder, self.dense_heads[task]]
        raise KeyError(f"UMedPT has no task {task!r}; it has {list(self.task_names)}.")
