"""Test helpers: a StepContext without Lightning, tiny models and batches."""

from __future__ import annotations

import torch

from medmtl.models.unet_vgg16 import UNetVGG16
from medmtl.strategies.context import PlainContext  # noqa: F401  (re-exported for the tests)
from medmtl.tasks import refuge_tasks


def tiny_unet(seed: int = 0, dtype=torch.float64) -> UNetVGG16:
    torch.manual_seed(seed)
    return UNetVGG16(refuge_tasks(), width=1 / 16, dropout=0.0).to(dtype)


def random_batch(seed: int = 0, size: int = 32, n: int = 2, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    od = (torch.rand(n, size, size, generator=g) > 0.6).to(dtype)
    return {
        "image": torch.rand(n, 3, size, size, generator=g, dtype=dtype),
        "od": od,
        "oc": od * (torch.rand(n, size, size, generator=g) > 0.5).to(dtype),
        "fovea_heatmap": torch.rand(n, size, size, generator=g, dtype=dtype),
        "glaucoma": torch.tensor([1.0, 0.0][:n] + [0.0] * max(0, n - 2), dtype=dtype),
    }
