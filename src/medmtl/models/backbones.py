"""Backbones of the scene networks, from timm, with weights from local files only.

- :func:`resnet_stages`: a timm ResNet (``resnet50``, ``resnet18``; ``test_resnet`` for tests)
  split into its four stages (stem + layer1, layer2, layer3, layer4), dilated to
  ``output_stride`` 8 as the survey's networks are (Vandenhende et al. 2022, section 4.1: "a
  ResNet encoder with dilated convolutions"). Networks that fuse or attend between stages
  (cross-stitch, NDDR-CNN, MTAN) need the stages one by one.
- :func:`hrnet_features`: HRNet's four branches (strides 4, 8, 16, 32) for the multi-scale
  decoders (MTI-Net, multi-scale PAD-Net): ``hrnet_w18`` (HRNet-18, as in the survey and Hervella et
  al. 2024), ``hrnet_w18_small``, or ``hrnet_tiny`` (a two-digit-thousands-of-parameters HRNet
  of the same topology for tests and CPU runs; never pretrained).
- :func:`dense_features`: one feature map for single-map decoders (the survey's MTL baseline and
  PAD-Net): a dilated ResNet's last stage, or HRNet's four branches up-sampled to the finest and
  concatenated (the survey's HRNet-18 variants);
- :class:`InputNormalization`: images arrive in [0, 1]; ImageNet-pretrained backbones expect the
  ImageNet mean and standard deviation (``input_normalization: imagenet``, the default).

``weights_path``: a local timm/torchvision state dict of the backbone; a missing file is one
sentence (:func:`medmtl.models.weights.resolve_weights_file`); nothing is downloaded.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.weights import load_state_dict, resolve_weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HRNET_TINY = dict(
    stem_width=16,
    stage1=dict(num_modules=1, num_branches=1, block_type="BASIC", num_blocks=(1,), num_channels=(8,), fuse_method="SUM"),
    stage2=dict(num_modules=1, num_branches=2, block_type="BASIC", num_blocks=(1, 1), num_channels=(8, 16), fuse_method="SUM"),
    stage3=dict(
        num_modules=1, num_branches=3, block_type="BASIC", num_blocks=(1, 1, 1), num_channels=(8, 16, 32), fuse_method="SUM"
    ),
    stage4=dict(
        num_modules=1,
        num_branches=4,
        block_type="BASIC",
        num_blocks=(1, 1, 1, 1),
        num_channels=(8, 16, 32, 64),
        fuse_method="SUM",
    ),
)


class InputNormalization(nn.Module):
    """(x - mean) / std with ImageNet's statistics, or the identity."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mode: str = "imagenet"):
        super().__init__()
        if mode not in ("imagenet", "none"):
            raise ConfigError(f"model.input_normalization must be imagenet or none, got {mode!r}.")
        self.mode = mode
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std if self.mode == "imagenet" else image


def timm_weights(weights_path: str | None) -> dict:
    """timm's arguments for a local state dict: read by the project's checked reader (data only,
    one sentence for a missing, truncated or foreign file), then handed to timm, which adapts it
    to the network (dropping the classifier, feature-only wrappers)."""
    if not weights_path:
        return {"pretrained": False}
    path = resolve_weights_file(weights_path, option="model.weights_path=null")
    return {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": load_state_dict(path)}}


def resnet_stages(name: str, output_stride: int = 8, weights_path: str | None = None) -> tuple[nn.ModuleList, list[int]]:
    """The four stages of a timm ResNet and their output channels."""
    import timm

    if not (name.startswith("resnet") or name == "test_resnet"):
        raise ConfigError(f"model.backbone must be a timm ResNet (resnet18, resnet50, test_resnet), got {name!r}.")
    network: Any = timm.create_model(
        name, num_classes=0, global_pool="", output_stride=output_stride, **timm_weights(weights_path)
    )
    stem = nn.Sequential(network.conv1, network.bn1, network.act1, network.maxpool)
    stages = nn.ModuleList([nn.Sequential(stem, network.layer1), network.layer2, network.layer3, network.layer4])
    channels = [info["num_chs"] for info in network.feature_info if info["module"].startswith("layer")]
    return stages, channels


def resnet_levels(name: str, output_stride: int = 8, weights_path: str | None = None) -> tuple[list[nn.Module], int]:
    """A dilated timm ResNet cut as LibMTL's PLE and LTB cut it: the stem (conv, BN, ReLU,
    max-pool), then its four stages; and the channels of the last."""
    stages, channels = resnet_stages(name, output_stride, weights_path)
    stem_and_first = cast(nn.Sequential, stages[0])
    return [stem_and_first[0], stem_and_first[1], stages[1], stages[2], stages[3]], channels[-1]


def hrnet_features(name: str, weights_path: str | None = None) -> tuple[nn.Module, list[int]]:
    """HRNet's four branches (a module returning a list of 4 maps, highest resolution first)."""
    import timm
    from timm.models.hrnet import HighResolutionNetFeatures

    network: Any
    if name == "hrnet_tiny":
        if weights_path:
            raise ConfigError("model.backbone=hrnet_tiny has no pretrained weights; set model.weights_path=null.")
        network = HighResolutionNetFeatures(HRNET_TINY, feature_location="", out_indices=(1, 2, 3, 4))
    elif name.startswith("hrnet"):
        network = timm.create_model(
            name, features_only=True, feature_location="", out_indices=(1, 2, 3, 4), **timm_weights(weights_path)
        )
    else:
        raise ConfigError(f"model.backbone must be an HRNet (hrnet_w18, hrnet_w18_small, hrnet_tiny), got {name!r}.")
    return network, list(network.feature_info.channels())


class MultiScaleFeatures(nn.Module):
    """HRNet's branches up-sampled (bilinearly) to the finest and concatenated."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x)
        size = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]], dim=1)


def dense_features(name: str, output_stride: int = 8, weights_path: str | None = None) -> tuple[nn.Module, int]:
    """A module giving one feature map and its channels: a dilated ResNet (``output_stride``) or
    an HRNet (stride 4, all branches concatenated)."""
    if name.startswith("hrnet"):
        network, channels = hrnet_features(name, weights_path)
        return MultiScaleFeatures(network), sum(channels)
    stages, channels = resnet_stages(name, output_stride, weights_path)
    return nn.Sequential(*stages), channels[-1]
