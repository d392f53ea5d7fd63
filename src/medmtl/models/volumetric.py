"""2D networks made 3D, as Yang et al. 2023 built their MedMNIST3D baselines ("ResNet-18 + 3D" and
"ResNet-18 + 2.5D").

:func:`to_3d` replaces, in place, every 2D layer of a network by its 3D counterpart with the same
settings repeated over the new (depth) axis: a ``Conv2d`` with kernel k x k, stride s and padding p
becomes a ``Conv3d`` with kernel k x k x k, stride s and padding p on every axis (``conv="3d"``),
or, for ``conv="2.5d"``, kernel 1 x k x k and padding 0 x p x p (each slice convolved in 2D; the
stride s still applies to every axis, as in their ``Conv2_5d``); ``BatchNorm2d``,
``MaxPool2d`` and ``AdaptiveAvgPool2d`` become ``BatchNorm3d``, ``MaxPool3d`` and
``AdaptiveAvgPool3d``. The network then reads volumes (B, C, D, H, W). Layers that are the same in
2D and 3D (ReLU, Linear, Identity) are kept; any other 2D layer is refused by name, so nothing is
left silently 2D.

The 3D kernels start in one of two ways (``init``):

- ``i3d`` (their script's default, ``--pretrained_3d i3d``): the 2D kernel is inflated,
  ``W3[:, :, d] = W2 / k_d`` for every depth index d of a depth kernel k_d (Carreira & Zisserman
  2017's inflation; with ``2.5d``, k_d = 1 and the 2D kernel is copied, as their converter does). A volume
  constant along the depth then gives, away from the depth borders, exactly the 2D network's
  response to one slice. Their 2D network is untrained, so this is an initialisation: depth-constant
  kernels of the 2D initialisation's scale / k.
- ``fresh``: PyTorch's default ``Conv3d`` initialisation (their ``--pretrained_3d`` set to anything
  else).

Which of the two gave the published "3D" rows is not stated in the paper; ``i3d`` is their default.
Checked against their converters (ACSConv's ``Conv3dConverter(i3d_repeat_axis=-3)`` and
``Conv2_5dConverter``, run beside ours on the same 2D network): the same weights and outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from medmtl.errors import ConfigError

INITS = ("i3d", "fresh")
CONVS = ("3d", "2.5d")


def _conv3d(conv: nn.Conv2d, init: str, depth_kernel: bool) -> nn.Conv3d:
    (k, k2), (s, s2), (d, d2) = conv.kernel_size, conv.stride, conv.dilation
    padding = conv.padding
    if k != k2 or s != s2 or d != d2 or not isinstance(padding, tuple) or padding[0] != padding[1]:
        raise ConfigError(f"to_3d repeats square convolution settings over the depth; {conv} is not square.")
    k_d, p_d = (k, padding[0]) if depth_kernel else (1, 0)
    conv3 = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=(k_d, k, k),
        stride=s,
        padding=(p_d, padding[0], padding[0]),
        dilation=d,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    if init == "i3d":
        with torch.no_grad():
            conv3.weight.copy_(conv.weight.unsqueeze(2).expand(-1, -1, k_d, -1, -1) / k_d)
            if conv.bias is not None:
                assert conv3.bias is not None
                conv3.bias.copy_(conv.bias)
    return conv3


def _batch_norm3d(norm: nn.BatchNorm2d) -> nn.BatchNorm3d:
    norm3 = nn.BatchNorm3d(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    norm3.load_state_dict(norm.state_dict())
    return norm3


def _layer_3d(layer: nn.Module, init: str, conv: str) -> nn.Module | None:
    """The 3D counterpart of a 2D layer, or None when ``layer`` is not a 2D layer."""
    if isinstance(layer, nn.Conv2d):
        return _conv3d(layer, init, depth_kernel=conv == "3d")
    if isinstance(layer, nn.BatchNorm2d):
        return _batch_norm3d(layer)
    if isinstance(layer, nn.MaxPool2d):
        return nn.MaxPool3d(layer.kernel_size, layer.stride, layer.padding, layer.dilation, ceil_mode=layer.ceil_mode)
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        size = layer.output_size
        if isinstance(size, tuple):
            if len(set(size)) != 1:
                raise ConfigError(f"to_3d repeats a square pooling size over the depth; {layer} is not square.")
            size = size[0]
        return nn.AdaptiveAvgPool3d(size)
    return None


def to_3d(network: nn.Module, init: str = "i3d", conv: str = "3d") -> nn.Module:
    """``network`` with every 2D layer replaced by its 3D counterpart (in place; also returned)."""
    if init not in INITS:
        raise ConfigError(f"the 3D initialisation must be one of {INITS}, got {init!r}.")
    if conv not in CONVS:
        raise ConfigError(f"the 3D convolution must be one of {CONVS}, got {conv!r}.")
    for name, child in network.named_children():
        replacement = _layer_3d(child, init, conv)
        if replacement is not None:
            setattr(network, name, replacement)
        elif type(child).__name__.endswith("2d"):
            raise ConfigError(f"to_3d has no 3D counterpart for {type(child).__name__} ({name}).")
        else:
            to_3d(child, init, conv)
    return network
