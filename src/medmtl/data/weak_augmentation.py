"""Weak augmentation without flips (Schafer et al. 2024 on MedMNIST: "weak standard augmentations ...
avoiding flips"), drawn from a per-sample seed so that a resumed run replays it.

One draw per sample, from ``torch.Generator().manual_seed(seed)``:

- a rotation by theta ~ U(-``max_rotation``, ``max_rotation``) degrees, a scaling s ~ U(``scale``),
  and a shift (t_x, t_y) ~ U(-``max_shift``, ``max_shift``)^2 in fractions of the image side,
  applied as one affine map A = s R(theta) (det A = s^2 > 0: never a reflection) with bilinear
  resampling and zeros outside the image;
- a contrast c ~ U(1 - ``max_contrast``, 1 + ``max_contrast``) and brightness
  b ~ U(-``max_brightness``, ``max_brightness``): x <- clip((x - mean x) c + mean x + b, 0, 1).

A volume (D, 3, H, W) gets the same draw for all its slices (one geometry per case).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WeakAugmentation:
    max_rotation: float = 10.0
    max_shift: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    max_contrast: float = 0.1
    max_brightness: float = 0.1

    def draw(self, seed: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(int(seed))
        u = torch.rand(6, generator=g, dtype=torch.float64).tolist()
        return {
            "angle": (2 * u[0] - 1) * self.max_rotation,
            "scale": self.scale[0] + u[1] * (self.scale[1] - self.scale[0]),
            "shift_x": (2 * u[2] - 1) * self.max_shift,
            "shift_y": (2 * u[3] - 1) * self.max_shift,
            "contrast": 1 + (2 * u[4] - 1) * self.max_contrast,
            "brightness": (2 * u[5] - 1) * self.max_brightness,
        }

    @staticmethod
    def matrix(p: dict[str, float]) -> torch.Tensor:
        """The 2 x 3 affine map of ``affine_grid`` (output -> input coordinates in [-1, 1])."""
        a = math.radians(p["angle"])
        rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
        inverse = rotation.T / p["scale"]
        shift = torch.tensor([p["shift_x"], p["shift_y"]], dtype=torch.float64) * 2  # fraction of side -> [-1, 1] units
        return torch.cat([inverse, (-inverse @ shift).unsqueeze(1)], dim=1)

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """``image``: (3, H, W) or (D, 3, H, W) in [0, 1]."""
        p = self.draw(seed)
        batch = image if image.dim() == 4 else image.unsqueeze(0)
        theta = self.matrix(p).to(batch.dtype).expand(len(batch), 2, 3)
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        moved = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        mean = moved.mean(dim=(-3, -2, -1), keepdim=True)
        moved = ((moved - mean) * p["contrast"] + mean + p["brightness"]).clamp(0.0, 1.0)
        return moved if image.dim() == 4 else moved[0]
