"""DeepLabV3+ with a ResNet encoder: Roy 2025's single-task segmentation baseline ("DeepLabV3+").

segmentation-models-pytorch's ``DeepLabV3Plus`` parts: a ResNet encoder at output stride 16 and
the DeepLabV3+ decoder (ASPP with depthwise-separable 3x3 convolutions, the stride-4 feature
fused in), which decodes at stride 4; each segmentation task has its own 1x1 conv, up-sampled to
the input (:class:`~medmtl.models.encoder_decoder.EncoderDecoderNet`). Choices:

- ASPP rates 6/12/18, as DeepLabV3+ uses at output stride 16 and as the MoE model's shared ASPP
  (smp's default is 12/24/36); ``atrous_rates`` changes them.
- Roy 2025 trained one network for the five lesions (one output per lesion), which is this model
  with the lesions as its tasks (``data.tasks``); ``optim=stl`` gives one network per lesion.
- Image-level tasks, when given, read the pooled encoder output: the model is then a plain
  hard-sharing multi-task DeepLabV3+ (the MoE model without experts).

Nothing is downloaded: ``weights_path`` is a local torchvision ResNet state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmtl.errors import ConfigError
from medmtl.models.encoder_decoder import EncoderDecoderNet
from medmtl.models.weights import load_torchvision_resnet
from medmtl.tasks import Task


class DeepLabV3Plus(EncoderDecoderNet):
    """Args:
    tasks: segmentation tasks (and optionally image-level tasks, see the module docstring).
    backbone: an smp ResNet encoder (``resnet50`` in Roy 2025; ``resnet18`` for tests).
    decoder_channels: ASPP and decoder width (256).
    atrous_rates: the ASPP dilation rates.
    dropout: before each image-level classifier.
    weights_path: a torchvision ResNet state dict file loaded into the encoder, or null.
    input_normalization: ``imagenet`` (ImageNet's channel statistics, with ImageNet weights) or ``none``.
    """

    input_multiple = 16
    classifier_pool = "avg"
    dense_upsample = 4

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet50",
        decoder_channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.0,
        weights_path: str | None = None,
        input_normalization: str = "imagenet",
        in_channels: int = 3,
    ):
        super().__init__(input_normalization)
        import segmentation_models_pytorch as smp

        if not backbone.startswith("resnet"):
            raise ConfigError(f"DeepLabV3Plus takes an smp ResNet encoder (resnet18/34/50...), got {backbone!r}.")
        network = smp.DeepLabV3Plus(
            backbone,
            encoder_weights=None,
            encoder_output_stride=16,
            decoder_channels=decoder_channels,
            decoder_atrous_rates=tuple(atrous_rates),
            in_channels=in_channels,
            classes=1,
        )
        self.encoder: Any = network.encoder
        self.decoder = network.decoder if any(t.is_dense for t in tasks) else None
        self._build_heads(
            tasks, bottleneck_channels=int(self.encoder.out_channels[-1]), decoded_channels=decoder_channels, dropout=dropout
        )
        if weights_path:
            load_torchvision_resnet(self.encoder, weights_path, option="model.weights_path=null")
