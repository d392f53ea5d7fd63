"""``graddrop``: gradient sign dropout (Chen et al. 2020, "Just Pick a Sign") at the shared
representation, as the paper places it (a layer on the activations before the task heads).

With Z the shared representation of a batch (B samples, any feature shape) and g_{k,b} = dL_k/dZ_b
task k's gradient at sample b, the gradients are first reduced over the batch the way the paper
does for batch-separated activations -- each sample's gradient signed by its activation, summed:

    S_k = sum_b sign(Z_b) * g_{k,b}                       (one value per feature)

Then the positive sign purity P = (1 + sum_k S_k / sum_k |S_k|) / 2, a uniform draw U per feature,
and each task's mask M_k = [P > U] [S_k > 0] + [P < U] [S_k < 0]: per feature, the tasks whose
(batch-reduced) gradient has the sign the draw kept. The update of Z at every sample is

    u_b = sum_k (l + (1 - l) M_k) * g_{k,b}

(``leak`` l = 0: the paper's GradDrop; l = 1: the plain sum), pulled back to the shared parameters
through Z; each head gets its own task's gradient. LibMTL's GradDrop computes the same (a test runs
it beside ours on the same draws), except that it adds 1e-7 to the purity's denominator; ours divides
as the paper's equation does (P = 1/2 where all S_k are 0), so that P does not depend on the losses'
scale: with gradients at Z of about 1e-6 (a mean over many pixels), LibMTL's term moves P by a few
percent, and it would make the update depend on the number of ranks, whose sum is R times the union's.
torchjd's GradDrop (``jd_graddrop``) is the other reading: it
decides per element of the Jacobian rows -- per shared parameter, or per sample and feature in
``representation`` mode -- without the batch reduction and the activation signs.

Data parallelism is exact: S is additive over samples, so the ranks sum their S_k (the purity and
the signs do not depend on the ranks' common loss scale), agree on U, and each pulls back its own
samples' update; the gradient average of the ranks is then the union batch's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.base import StepContext
from medmtl.strategies.gradient_combination import GradientCombination


class GradientSignDropout(GradientCombination):
    needs_jacobian = False  # it reads the representation's values and the batch-reduced gradients, summed over ranks

    def __init__(self, leak: float = 0.0, jacobian_method: str = "loop"):
        if not 0.0 <= leak <= 1.0:
            raise ConfigError(f"optim.strategy.leak must be in [0, 1] (0: GradDrop, 1: the plain sum), got {leak}.")
        super().__init__("representation", jacobian_method)
        self.leak = leak

    def combination_weights(self, gramian, losses, jacobian=None, names=None):
        raise TypeError("GradDrop's update is not a combination of the task gradients: see representation_update.")

    def representation_update(
        self,
        ctx: StepContext,
        jacobian: torch.Tensor,
        losses: torch.Tensor,
        names: Sequence[str],
        gramian: torch.Tensor,
        representation: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = jacobian.shape[0]
        parts = jacobian.split([z.numel() for z in representation], dim=1)
        reduced = [
            (g.reshape(t, z.shape[0], -1) * torch.sign(z).reshape(1, z.shape[0], -1).to(g.dtype)).sum(dim=1)
            for g, z in zip(parts, representation)
        ]
        batch_sums = ctx.global_sum(torch.cat(reduced, dim=1))  # (T, features): additive over the ranks' samples
        magnitude = batch_sums.abs().sum(dim=0)
        ratio = batch_sums.sum(dim=0) / torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
        purity = 0.5 * (1.0 + ratio)  # 1/2 where every task's S_k is 0
        draw = ctx.agree(torch.rand_like(purity))
        kept = (purity > draw) & (batch_sums > 0) | (purity < draw) & (batch_sums < 0)  # (T, features)
        factor = self.leak + (1.0 - self.leak) * kept.to(jacobian.dtype)
        updates, offset = [], 0
        for g, z in zip(parts, representation):
            features = g.shape[1] // z.shape[0]
            mask = factor[:, offset : offset + features].unsqueeze(1)  # the same for every sample
            updates.append((g.reshape(t, z.shape[0], features) * mask).sum(dim=0).reshape(-1))
            offset += features
        return torch.cat(updates), None


__all__ = ["GradientSignDropout"]
