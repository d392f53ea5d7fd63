"""Pretrained weights from local files only: every failure becomes one sentence.

Nothing is downloaded. A weights file is looked for at the configured path, then (for a bare file
name) in ``$TORCH_HOME/hub/checkpoints`` where torchvision keeps its cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from medmtl.errors import WeightsNotFoundError

__all__ = ["WeightsNotFoundError", "load_state_dict", "resolve_weights_file", "load_torchvision_resnet"]


def torch_hub_checkpoints() -> Path:
    torch_home = os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
    return Path(torch_home) / "hub" / "checkpoints"


def resolve_weights_file(path: str | os.PathLike, option: str) -> Path:
    """Return an existing weights file or raise :class:`WeightsNotFoundError`.

    Args:
        path: a path, or a bare file name looked up in the torch hub cache.
        option: the override that turns pretrained loading off, e.g. ``model.pretrained=false``
            (quoted in the message).
    """
    candidates = [Path(path).expanduser()]
    if not candidates[0].is_absolute() and candidates[0].parent == Path("."):
        candidates.append(torch_hub_checkpoints() / candidates[0].name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c) for c in candidates)
    raise WeightsNotFoundError(
        f"Pretrained weights file not found: looked for {looked}. This machine downloads nothing; "
        f"copy the file there (or set the path in the config), or set {option} to train from scratch."
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file read as data only (:func:`medmtl.checkpoints.read_checkpoint`)."""
    from medmtl.checkpoints import read_checkpoint

    state = read_checkpoint(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def load_torchvision_resnet(encoder: nn.Module, weights_path: str | os.PathLike, option: str) -> None:
    """A torchvision ResNet state dict (its ``fc`` layer ignored) into an smp ResNet encoder, strictly
    (smp's ResNet encoders keep torchvision's parameter names)."""
    path = resolve_weights_file(weights_path, option=option)
    state = {k: v for k, v in load_state_dict(path).items() if not k.startswith("fc.")}
    encoder.load_state_dict(state)
