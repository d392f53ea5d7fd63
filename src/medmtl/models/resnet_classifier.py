"""A ResNet image classifier: Roy 2025's single-task grading baseline ("ResNet-50").

A torchvision-layout ResNet (segmentation-models-pytorch's encoder, output stride 32), global
average pooling, dropout and one linear layer per image-level task (Roy 2025 graded retinopathy
and macular-edema risk with one such network; ``optim=stl`` gives one network per grade). Dense
tasks are refused: this network has no decoder.

Nothing is downloaded: ``weights_path`` is a local torchvision ResNet state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmtl.errors import ConfigError
from medmtl.models.encoder_decoder import EncoderDecoderNet
from medmtl.models.weights import load_torchvision_resnet
from medmtl.tasks import Task


class ResNetClassifier(EncoderDecoderNet):
    """Args:
    tasks: image-level tasks (binary, multiclass, multilabel).
    backbone: an smp ResNet encoder (``resnet50`` in Roy 2025; ``resnet18`` for tests).
    dropout: before each classifier.
    weights_path: a torchvision ResNet state dict file loaded into the encoder, or null.
    input_normalization: ``imagenet`` (ImageNet's channel statistics, with ImageNet weights) or ``none``.
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
        self.encoder: Any = smp.encoders.get_encoder(backbone, in_channels=in_channels, depth=5, weights=None)
        self.decoder = None
        self._build_heads(tasks, bottleneck_channels=int(self.encoder.out_channels[-1]), decoded_channels=0, dropout=dropout)
        if weights_path:
            load_torchvision_resnet(self.encoder, weights_path, option="model.weights_path=null")
