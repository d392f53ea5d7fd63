"""``segnet_mtan``: the SegNet-MTAN of the common NYUv2 3-task benchmark (Liu et al. 2019), on
which MTAN, Nash-MTL, FAMO and the loss-balancing literature report Delta_m at 288 x 384.

Shared SegNet (VGG-16 layout): five encoder levels of conv3x3-BN-ReLU with 64, 128, 256, 512, 512
channels (2, 2, 3, 3, 3 convolutions), 2x2 max pooling that remembers its indices; five decoder
levels that max-unpool with those indices, then the mirrored convolutions. Task attention at
every encoder and decoder level:

- encoder level j: mask = g_kj(e_j0) (j = 0) or g_kj([e_j0, c_{k,j-1}]) with e_j0 the level's first
  convolution output and c the attended features carried from the previous level; attended
  a = mask * e_j (the level's output); c_kj = maxpool(h_j(a)) with h_j a conv3x3-BN-ReLU to the
  next level's width, shared by the tasks;
- decoder level j (coarse to fine): c = h'_j(upsample x2 of the previous attended features), mask
  = g'_kj([unpooled input of the level, c]), attended = mask * d_j (the level's output);

g = 1x1 conv, BN, ReLU, 1x1 conv, BN, sigmoid (task-specific); h, h' shared. Each task's head is a
3x3 then a 1x1 convolution (no batch norm) to ``task.channels`` on its finest attended decoder
features. As in the reference code, the convolutions start from Xavier-normal weights and zero
biases, batch norm from (1, 0). ``width`` scales every channel count (1.0: 44.2 M parameters with
the 13-class, depth and normals heads, 1.77 x the 24.98 M SegNet that the MTAN paper compares it to).
The shared representation of the "-UB" strategies is the shared SegNet's features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task

CHANNELS = (64, 128, 256, 512, 512)
CONVS = (2, 2, 3, 3, 3)


def max_unpool2x2(x: torch.Tensor, indices: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """SegNet's unpooling of a 2x2, stride-2 max pooling: each value goes back to the position its
    window's maximum came from, zeros elsewhere. Equal to ``F.max_unpool2d(x, indices, 2, 2)``,
    written as a nearest up-sampling times a mask so that it also runs where PyTorch's kernel is
    refused (``torch.use_deterministic_algorithms(True)``, e.g. ``trainer.deterministic=true``)."""
    height, width = int(size[0]), int(size[1])
    positions = torch.arange(height * width, device=x.device).view(1, 1, height, width)
    spread = F.interpolate(indices.float(), size=(height, width), mode="nearest").long()
    return F.interpolate(x, size=(height, width), mode="nearest") * (spread == positions).to(x.dtype)


def conv3(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def attention(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 1),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 1),
        nn.BatchNorm2d(channels),
        nn.Sigmoid(),
    )


class SegNetMTAN(DenseSceneNet):
    """Args: tasks; width (channel multiplier); input_normalization (``none`` in the benchmark:
    MTAN's images are fed in [0, 1])."""

    input_multiple = 32

    def __init__(self, tasks: Sequence[Task], width: float = 1.0, input_normalization: str = "none"):
        super().__init__(tasks, input_normalization)
        c = [max(1, round(w * width)) for w in CHANNELS]
        self.encoder_first = nn.ModuleList([conv3(3 if i == 0 else c[i - 1], c[i]) for i in range(5)])
        self.encoder_rest = nn.ModuleList([nn.Sequential(*[conv3(c[i], c[i]) for _ in range(CONVS[i] - 1)]) for i in range(5)])
        # decoder level i (fine index) maps c[i] (after unpooling) to c[i - 1] (c[0] at the finest level)
        out = [c[0]] + c[:4]
        self.decoder_first = nn.ModuleList([conv3(c[i], out[i]) for i in range(5)])
        self.decoder_rest = nn.ModuleList(
            [nn.Sequential(*[conv3(out[i], out[i]) for _ in range(CONVS[i] - 1)]) for i in range(5)]
        )
        self.encoder_carry = nn.ModuleList([conv3(c[i], c[min(i + 1, 4)]) for i in range(5)])
        self.decoder_carry = nn.ModuleList([conv3(c[i], out[i]) if i < 4 else conv3(c[4], c[4]) for i in range(5)])
        self.encoder_attention = nn.ModuleDict(
            {t.name: nn.ModuleList([attention(c[0], c[0])] + [attention(2 * c[i], c[i]) for i in range(1, 5)]) for t in tasks}
        )
        decoder_in = [c[i] + (out[i] if i < 4 else c[4]) for i in range(5)]
        self.decoder_attention = nn.ModuleDict(
            {t.name: nn.ModuleList([attention(decoder_in[i], out[i]) for i in range(5)]) for t in tasks}
        )
        self.heads_by_task = nn.ModuleDict(
            {t.name: nn.Sequential(nn.Conv2d(c[0], c[0], 3, padding=1), nn.Conv2d(c[0], t.channels, 1)) for t in tasks}
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        if image.shape[-1] % self.input_multiple or image.shape[-2] % self.input_multiple:
            from medmtl.errors import ConfigError

            raise ConfigError(f"SegNetMTAN needs image sides divisible by {self.input_multiple}, got {tuple(image.shape[-2:])}.")
        self._input_size = tuple(image.shape[-2:])
        x, shared, indices = self.normalize(image), {}, []
        for i in range(5):
            first = self.encoder_first[i](x)
            level = self.encoder_rest[i](first)
            shared[f"e{i}_first"], shared[f"e{i}"] = first, level
            x, index = F.max_pool2d(level, 2, stride=2, return_indices=True)
            indices.append(index)
        for i in reversed(range(5)):
            unpooled = max_unpool2x2(x, indices[i], shared[f"e{i}"].shape[-2:])
            x = self.decoder_rest[i](self.decoder_first[i](unpooled))
            shared[f"d{i}_in"], shared[f"d{i}"] = unpooled, x
        return shared

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        logits = {}
        for name in tasks:
            carried: torch.Tensor | None = None
            for i, layer in enumerate(cast(nn.ModuleList, self.encoder_attention[name])):
                first = shared[f"e{i}_first"]
                mask = layer(first if carried is None else torch.cat([first, carried], dim=1))
                carried = F.max_pool2d(self.encoder_carry[i](mask * shared[f"e{i}"]), 2, stride=2)
            assert carried is not None  # five encoder levels
            attended = carried
            for i in reversed(range(5)):
                up = F.interpolate(attended, size=shared[f"d{i}_in"].shape[-2:], mode="bilinear", align_corners=True)
                mask = cast(nn.ModuleList, self.decoder_attention[name])[i](
                    torch.cat([shared[f"d{i}_in"], self.decoder_carry[i](up)], dim=1)
                )
                attended = mask * shared[f"d{i}"]
            logits[name] = self.heads_by_task[name](attended)
        return self.finish(logits, self._input_size)

    def path_modules(self, task: str) -> list[nn.Module]:
        self._check_tasks([task])
        shared = [
            self.encoder_first,
            self.encoder_rest,
            self.decoder_first,
            self.decoder_rest,
            self.encoder_carry,
            self.decoder_carry,
        ]
        return shared + [self.encoder_attention[task], self.decoder_attention[task], self.heads_by_task[task]]
