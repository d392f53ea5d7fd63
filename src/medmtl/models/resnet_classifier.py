"""A ResNet image classifier: Roy 2025's single-task grading baseline ("ResNet-50") and Yang et
al. 2023's MedMNIST baselines ("ResNet-18 (28)").

A torchvision-layout ResNet (segmentation-models-pytorch's encoder), global average pooling,
dropout and one linear layer per image-level task (Roy 2025 graded retinopathy and macular-edema
risk with one such network; ``optim=stl`` gives one network per grade). Dense tasks are refused:
this network has no decoder.

``stem`` chooses the first layers:

- ``imagenet`` (default): a 7x7 convolution of stride 2 and a 3x3 max pool (output stride 32);
- ``cifar``: a 3x3 convolution of stride 1 and no max pool (output stride 8), the network of Yang
  et al. 2023's 28-pixel MedMNIST baselines (their code adapts a CIFAR ResNet): a 28x28 image
  reaches ``layer4`` as 4x4 instead of 1x1. Its convolutions keep PyTorch's default
  initialisation, as in their code (torchvision's ResNet draws them He-normal, fan-out). The
  residual stages are torchvision's in both.

``dims: 3`` makes the network 3D (:func:`medmtl.models.volumetric.to_3d`): every convolution,
batch norm and pooling layer becomes its 3D counterpart with the same settings on the depth axis,
so that it reads volumes (B, C, D, H, W) -- Yang et al. 2023's "ResNet-18 + 3D" for MedMNIST3D, with
``stem: cifar`` as their code builds it (a 28^3 volume reaches ``layer4`` as 4^3). ``init_3d``
chooses how its kernels start (``i3d``, their default: the 2D initialisation inflated over the
depth; ``fresh``: PyTorch's ``Conv3d`` initialisation); ``conv_3d: 2.5d`` keeps the kernels 2D
(1 x k x k, each slice convolved alone: their "ResNet-18 + 2.5D", about a third of the cost).

Nothing is downloaded: ``weights_path`` is a local torchvision ResNet state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.encoder_decoder import EncoderDecoderNet
from medmtl.models.volumetric import to_3d
from medmtl.models.weights import load_torchvision_resnet
from medmtl.tasks import Task

STEMS = ("imagenet", "cifar")


class ResNetClassifier(EncoderDecoderNet):
    """Args:
    tasks: image-level tasks (binary, multiclass, multilabel).
    backbone: an smp ResNet encoder (``resnet50`` in Roy 2025; ``resnet18`` for tests).
    dropout: before each classifier.
    weights_path: a torchvision ResNet state dict file loaded into the encoder, or null.
    input_normalization: ``imagenet`` (ImageNet's channel statistics, with ImageNet weights) or ``none``.
    stem: ``imagenet`` (7x7 stride-2 convolution + max pool) or ``cifar`` (3x3 stride-1
        convolution, no max pool: Yang et al. 2023's ResNet-18 (28)).
    dims: 2 (images) or 3 (volumes: Yang et al. 2023's "ResNet-18 + 3D").
    init_3d: with ``dims: 3``, ``i3d`` (the 2D initialisation inflated, their default) or ``fresh``.
    conv_3d: with ``dims: 3``, ``3d`` (k x k x k kernels) or ``2.5d`` (1 x k x k kernels).
    """

    classifier_pool = "avg"  # global pooling takes any input size

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet50",
        dropout: float = 0.0,
        weights_path: str | None = None,
        in_channels: int = 3,
        input_normalization: str = "imagenet",
        stem: str = "imagenet",
        dims: int = 2,
        init_3d: str = "i3d",
        conv_3d: str = "3d",
    ):
        super().__init__(input_normalization)
        import segmentation_models_pytorch as smp

        dense = [t.name for t in tasks if t.is_dense]
        if dense:
            raise ConfigError(
                f"ResNetClassifier has no decoder for the pixel-level tasks {dense}; "
                f"keep the image-level tasks only (e.g. data.tasks) or use model=deeplabv3p."
            )
        if not backbone.startswith("resnet"):
            raise ConfigError(f"ResNetClassifier takes an smp ResNet encoder (resnet18/34/50...), got {backbone!r}.")
        if stem not in STEMS:
            raise ConfigError(f"model.stem must be one of {STEMS}, got {stem!r}.")
        self.encoder: Any = smp.encoders.get_encoder(backbone, in_channels=in_channels, depth=5, weights=None)
        if stem == "cifar":
            if weights_path:
                raise ConfigError("model.stem=cifar has no ImageNet stem to load weights into; use model.weights_path=null.")
            self.encoder.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.encoder.maxpool = nn.Identity()
            for conv in self.encoder.modules():  # their code keeps PyTorch's default initialisation
                if isinstance(conv, nn.Conv2d):
                    conv.reset_parameters()
        if dims not in (2, 3):
            raise ConfigError(f"model.dims must be 2 (images) or 3 (volumes), got {dims!r}.")
        if dims == 3:
            if weights_path:
                raise ConfigError("model.dims=3 has no 3D weights to load; use model.weights_path=null.")
            to_3d(self.encoder, init_3d, conv_3d)
        self.decoder = None
        self._build_heads(tasks, bottleneck_channels=int(self.encoder.out_channels[-1]), decoded_channels=0, dropout=dropout)
        if weights_path:
            load_torchvision_resnet(self.encoder, weights_path, option="model.weights_path=null")
