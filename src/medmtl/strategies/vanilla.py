"""Equal weights (``vanilla``) and single-task learning (``stl``).

Vanilla MTL: one forward, L = sum_k L_k over the tasks labelled in the batch, one backward, one
optimizer step.

STL: the same update on :class:`~medmtl.models.base.SeparateNetworks`, one network per task. The
networks share no parameter, so dL/dtheta for network k is dL_k/dtheta and Adam, acting element-wise,
makes this exactly T independent trainings; its parameter count and iteration time are the sums
over the single-task networks, as seed 000 reports them.
"""

from __future__ import annotations

import torch

from medmtl.strategies.base import Batch, StepContext, Strategy


class EqualWeights(Strategy):
    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        losses = ctx.losses(ctx.forward(batch), batch)
        if not losses:
            return {}
        (optimizer,) = ctx.optimizers()
        optimizer.zero_grad(set_to_none=True)
        total = torch.stack(list(losses.values())).sum()
        ctx.backward(total)
        ctx.clip_gradients(optimizer)
        optimizer.step()
        return self.detached(losses) | {"loss/total": total.detach()}


class SingleTask(EqualWeights):
    separate_networks = True
