"""Learning-rate schedules that configs name and ``torch.optim.lr_scheduler`` lacks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from medmtl.errors import ConfigError


def multistep_at_fractions(
    optimizer: torch.optim.Optimizer, total_epochs: int, fractions: Sequence[float] = (0.5, 0.75), gamma: float = 0.1
) -> torch.optim.lr_scheduler.MultiStepLR:
    """The learning rate multiplied by ``gamma`` at each fraction of the run: lr_e = lr_0 gamma^m(e),
    m(e) = #{f in fractions : e >= floor(f total_epochs)} (stepped per epoch). Yang et al. 2023's
    MedMNIST recipe: x 0.1 at 50% and 75% of the epochs (epochs 50 and 75 of 100), so a shortened run
    keeps the schedule's shape. Milestones are rounded down to whole epochs (their script compares
    the epoch counter with 0.75 x epochs, which never matches, so never decays, when that is not whole).
    """
    if total_epochs < 1:
        raise ConfigError(f"multistep_at_fractions needs total_epochs >= 1, got {total_epochs}.")
    if any(not 0.0 < f < 1.0 for f in fractions):
        raise ConfigError(f"optim.scheduler.fractions must lie in (0, 1), got {list(fractions)}.")
    milestones = sorted({max(1, math.floor(f * total_epochs)) for f in fractions})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
