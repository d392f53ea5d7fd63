"""Multi-task U-Net with a VGG encoder (Pascal et al. 2022, Fig. 5; docs/methods.md).

Encoder: five levels of ``conv3x3-BN-ReLU`` blocks with 64, 128, 256, 512, 512 channels and a 2x2
max pool between levels. Decoder: four bilinear up-sampling blocks with skip connections,
1024->256, 512->128, 256->64, 128->64 (middle width half the input). Heads: a 1x1 conv per dense
task (OD, OC, fovea heatmap) on the shared decoder output; the classifier branches off the
bottleneck: global max pool -> dropout(0.8) -> linear(512, 1).

Layout choice: with two convolutions per level (``encoder_layout: vgg13``, the default) the
multi-task network has 17,268,036 parameters and the four single-task networks 61,213,572, the
counts of Pascal et al. 2022 Table 1 (17.2e6 / 61.2e6); the authors' code loads ``vgg13_bn`` weights. A
true VGG16 layout (2, 2, 3, 3, 3 convolutions per level) is ``encoder_layout: vgg16`` (22.6e6).

Batch norm (``norm_statistics``): ``batch`` (default) as the authors' code, which builds every
batch norm with ``track_running_stats=False`` and validates one image at a time: training
normalises with the batch's statistics, evaluation with each image's own (a batch of one, whatever
the evaluation batch size here), and no running statistics exist. ``running`` is PyTorch's usual
batch norm (running means and variances at evaluation); the two give different test outputs from
the same weights.

Heads and the task paths: :class:`~medmtl.models.encoder_decoder.EncoderDecoderNet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.encoder_decoder import EncoderDecoderNet
from medmtl.models.weights import load_state_dict, resolve_weights_file
from medmtl.tasks import Task

ENCODER_CHANNELS = (64, 128, 256, 512, 512)
CONVS_PER_LEVEL = {"vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3)}
TORCHVISION_ARCH = {"vgg13": "vgg13_bn", "vgg16": "vgg16_bn"}


class BatchStatisticsNorm(nn.BatchNorm2d):
    """Batch norm without running statistics: in training the batch's mean and (biased) variance per
    channel, in evaluation each image's own over its pixels (a batch of one), with the same affine
    weight and bias."""

    def __init__(self, num_features: int):
        super().__init__(num_features, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


#: ``norm_statistics`` -> the batch-norm class
NORMS: dict[str, type[nn.BatchNorm2d]] = {"batch": BatchStatisticsNorm, "running": nn.BatchNorm2d}


def conv_bn_relu(cin: int, cout: int, norm: type[nn.BatchNorm2d] = nn.BatchNorm2d) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), norm(cout), nn.ReLU(inplace=True)]


def conv_stack(widths: Sequence[int], norm: type[nn.BatchNorm2d] = nn.BatchNorm2d) -> nn.Sequential:
    """``len(widths) - 1`` conv-BN-ReLU layers through the given channel widths."""
    layers: list[nn.Module] = []
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += conv_bn_relu(cin, cout, norm)
    return nn.Sequential(*layers)


class VGGEncoder(nn.Module):
    """Returns the feature map of every level (the last one is the bottleneck)."""

    def __init__(
        self,
        channels: Sequence[int],
        convs_per_level: Sequence[int],
        in_channels: int = 3,
        norm: type[nn.BatchNorm2d] = nn.BatchNorm2d,
    ):
        super().__init__()
        levels = []
        cin = in_channels
        for cout, n in zip(channels, convs_per_level):
            levels.append(conv_stack([cin] + [cout] * n, norm))
            cin = cout
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, level in enumerate(self.levels):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = level(x)
            features.append(x)
        return features


class UpBlock(nn.Module):
    """Bilinear x2 up-sampling, concatenation with the skip, two conv-BN-ReLU (middle = in/2)."""

    def __init__(self, in_channels: int, out_channels: int, norm: type[nn.BatchNorm2d] = nn.BatchNorm2d):
        super().__init__()
        self.convs = conv_stack([in_channels, in_channels // 2, out_channels], norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.convs(torch.cat([skip, x], dim=1))


class UNetDecoder(nn.Module):
    def __init__(self, channels: Sequence[int], norm: type[nn.BatchNorm2d] = nn.BatchNorm2d):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        # Output widths follow the reference: each block halves towards the next skip's width.
        self.blocks = nn.ModuleList(
            [UpBlock(c5 + c4, c3, norm), UpBlock(c3 + c3, c2, norm), UpBlock(c2 + c2, c1, norm), UpBlock(c1 + c1, c1, norm)]
        )
        self.out_channels = c1

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
        return x


class UNetVGG16(EncoderDecoderNet):
    """U-Net VGG multi-task network; see the module docstring.

    Args:
        tasks: the tasks to build heads for (image-level tasks get a classifier on the bottleneck,
            dense tasks a 1x1 conv on the decoder).
        width: channel multiplier (1.0 = the paper; small values for tests and CPU runs).
        encoder_layout: ``vgg13`` (reproduces the published parameter counts) or ``vgg16``.
        dropout: dropout before each classifier (0.8 in Pascal et al. 2022).
        pretrained: load ImageNet weights into the encoder from ``weights_path`` (width 1 only).
        weights_path: a torchvision ``vgg13_bn``/``vgg16_bn`` state dict file, or its bare name in
            ``$TORCH_HOME/hub/checkpoints``.
        head_prior: initial foreground probability of the dense heads: their bias starts at
            log(prior / (1 - prior)) (Lin et al. 2017's prior initialisation). Pascal et al. 2022 specifies
            Kaiming-uniform weights but no bias; with a zero bias every map starts at 0.5 and Adam
            needs thousands of steps to bring the background of the sparse OD/OC/fovea maps down.
            ``null`` keeps zero biases.
        norm_statistics: ``batch`` (the authors' batch norm, module docstring) or ``running``.
    """

    input_multiple = 16  # four 2x2 max pools

    def __init__(
        self,
        tasks: Sequence[Task],
        width: float = 1.0,
        encoder_layout: str = "vgg13",
        dropout: float = 0.8,
        pretrained: bool = False,
        weights_path: str | None = None,
        in_channels: int = 3,
        head_prior: float | None = 0.01,
        norm_statistics: str = "batch",
    ):
        super().__init__()
        if norm_statistics not in NORMS:
            raise ConfigError(f"model.norm_statistics must be one of {list(NORMS)}, got {norm_statistics!r}.")
        if encoder_layout not in CONVS_PER_LEVEL:
            raise ConfigError(f"encoder_layout must be one of {list(CONVS_PER_LEVEL)}, got {encoder_layout!r}.")
        if width <= 0:
            raise ConfigError(f"width must be positive, got {width}.")
        self.encoder_layout = encoder_layout
        channels = [max(1, round(c * width)) for c in ENCODER_CHANNELS]
        norm = NORMS[norm_statistics]
        self.encoder = VGGEncoder(channels, CONVS_PER_LEVEL[encoder_layout], in_channels, norm)
        self.decoder = UNetDecoder(channels, norm) if any(t.is_dense for t in tasks) else None
        self._build_heads(tasks, bottleneck_channels=channels[-1], decoded_channels=channels[0], dropout=dropout)
        self._init_weights()
        self._apply_head_prior(head_prior)
        if pretrained:
            if width != 1.0 or in_channels != 3:
                raise ConfigError("pretrained=true needs width=1.0 and in_channels=3 (the ImageNet VGG shapes).")
            if not weights_path:
                raise ConfigError("pretrained=true needs model.weights_path (a torchvision VGG-BN state dict file).")
            self.load_encoder_weights(weights_path)

    def _init_weights(self) -> None:
        """Kaiming-uniform initialisation, as in Pascal et al. 2022's implementation details."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def load_encoder_weights(self, weights_path: str) -> None:
        """Copy a torchvision VGG-BN ``features`` state into the encoder, layer by layer in order."""
        import torchvision

        path = resolve_weights_file(weights_path, option="model.pretrained=false")
        reference = getattr(torchvision.models, TORCHVISION_ARCH[self.encoder_layout])(weights=None)
        reference.load_state_dict(load_state_dict(path))
        source = [m for m in reference.features if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        target = [m for m in self.encoder.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        if len(source) != len(target):
            raise ConfigError(f"{path} has {len(source)} conv/BN layers, the encoder {len(target)}.")
        for src, dst in zip(source, target):
            own = dst.state_dict()  # without running statistics under norm_statistics=batch
            dst.load_state_dict({key: value for key, value in src.state_dict().items() if key in own})
