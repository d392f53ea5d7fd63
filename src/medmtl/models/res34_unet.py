"""ResNet-34 U-Net, the transfer-learning reference of Pascal et al. 2022 Table 2 ("Res34-Unet").

Encoder and decoder are segmentation-models-pytorch's ``Unet`` parts (ResNet-34 encoder, five
up-sampling blocks with skip connections, ``decoder_channels`` wide); the heads are those of
:class:`~medmtl.models.encoder_decoder.EncoderDecoderNet`, so the network trains on all four
REFUGE tasks with every strategy (the reference was an OD/OC segmenter; single-task runs,
``optim=stl``, give its per-task form). Pascal et al. 2022 initialised the encoder from weights trained on
Messidor-2; any torchvision-layout ResNet state dict file can be given (``weights_path``),
nothing is downloaded (smp's ``encoder_weights`` stays ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmtl.errors import ConfigError
from medmtl.models.encoder_decoder import EncoderDecoderNet
from medmtl.models.weights import load_torchvision_resnet
from medmtl.tasks import Task


class Res34UNet(EncoderDecoderNet):
    """Args:
    tasks: the task set (image-level tasks: classifier on the deepest encoder feature; dense: 1x1 conv).
    backbone: an smp ResNet encoder (``resnet34``; ``resnet18`` for quick tests).
    decoder_channels: widths of the five decoder blocks (smp's default 256, 128, 64, 32, 16).
    dropout: before each classifier.
    pretrained: load ``weights_path`` (a torchvision ResNet state dict) into the encoder.
    head_prior: initial foreground probability of the dense heads (see ``UNetVGG16``).
    """

    input_multiple = 32

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet34",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        dropout: float = 0.8,
        pretrained: bool = False,
        weights_path: str | None = None,
        in_channels: int = 3,
        head_prior: float | None = 0.01,
    ):
        super().__init__()
        import segmentation_models_pytorch as smp

        if not backbone.startswith("resnet"):
            raise ConfigError(f"Res34UNet takes an smp ResNet encoder (resnet18/34/50...), got {backbone!r}.")
        unet = smp.Unet(
            backbone, encoder_weights=None, in_channels=in_channels, classes=1, decoder_channels=tuple(decoder_channels)
        )
        self.encoder: Any = unet.encoder
        self.decoder = unet.decoder if any(t.is_dense for t in tasks) else None
        self._build_heads(
            tasks, bottleneck_channels=int(self.encoder.out_channels[-1]), decoded_channels=decoder_channels[-1], dropout=dropout
        )
        self._apply_head_prior(head_prior)
        if pretrained:
            if not weights_path:
                raise ConfigError("pretrained=true needs model.weights_path (a torchvision ResNet state dict file).")
            load_torchvision_resnet(self.encoder, weights_path, option="model.pretrained=false")
