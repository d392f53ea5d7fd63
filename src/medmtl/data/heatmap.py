"""Fovea heatmaps (Pascal et al. 2022, Fig. 6) and their inverse, the centre of mass.

Target: an isotropic Gaussian with peak 1, h(x, y) = exp(-((x - x0)^2 + (y - y0)^2) / (2 var)),
with var = 50 px^2 on the 256 x 256 grid (docs/methods.md). Pixel (i, j) has its centre at
x = j, y = i (the same convention as the fovea coordinates after resizing).
Prediction: the centre of mass sum(p * x) / sum(p) of the predicted map, no post-processing.
"""

from __future__ import annotations

import numpy as np
import torch


def gaussian_heatmap(height: int, width: int, x0: float, y0: float, variance: float) -> np.ndarray:
    """(H, W) float32 map with peak 1 at (x0, y0)."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    return np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2.0 * variance)).astype(np.float32)


def scaled_variance(image_size: int, variance_at_256: float = 50.0) -> float:
    """Keep the Gaussian's extent proportional to the image when the grid is not 256 px."""
    return variance_at_256 * (image_size / 256.0) ** 2


def centre_of_mass(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) non-negative maps -> (B, 2) coordinates (x, y); the grid centre for an all-zero map."""
    b, h, w = maps.shape
    maps = maps.clamp_min(0).to(torch.float64)
    ys = torch.arange(h, dtype=torch.float64, device=maps.device)
    xs = torch.arange(w, dtype=torch.float64, device=maps.device)
    mass = maps.sum(dim=(1, 2))
    x = (maps.sum(dim=1) * xs).sum(dim=1) / mass.clamp_min(1e-12)
    y = (maps.sum(dim=2) * ys).sum(dim=1) / mass.clamp_min(1e-12)
    empty = mass <= 1e-12
    x = torch.where(empty, torch.full_like(x, (w - 1) / 2), x)
    y = torch.where(empty, torch.full_like(y, (h - 1) / 2), y)
    return torch.stack([x, y], dim=1).to(torch.float32)
