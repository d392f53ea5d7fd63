"""``mgda`` (Sener & Koltun 2018; survey 3.1.5): the min-norm point of the convex hull of the
task gradients.

w* = argmin_{w in simplex} || sum_k w_k g_k ||^2 = argmin w^T G w, solved by Frank-Wolfe on the
Gramian (Sener & Koltun, Algorithm 2): start at the uniform point; at each step move towards the
vertex e_t with t = argmin_k (G w)_k, with the exact line search of the two-point problem
min_gamma ||(1 - gamma) v + gamma g_t||^2 (closed form); stop when the step is below ``tolerance``.
For two tasks this is exact in one step: w_1 = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1).

Gradient normalisation (``normalization``) before solving, with n_k = 1 (``none``), ||g_k||
(``l2``), L_k (``loss``) or L_k ||g_k|| (``loss+``): the solver sees G_ij / (n_i n_j). As in the
authors' code, the weights then multiply the raw task gradients (``rescale: false``);
``rescale: true`` applies w_k / n_k, the exact combination of the normalised gradients.
"""

from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.strategies.gradient_combination import GradientCombination

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def min_norm_weights(gramian: torch.Tensor, max_iterations: int = 250, tolerance: float = 1e-6) -> torch.Tensor:
    """Frank-Wolfe on the simplex for min_w w^T G w."""
    gramian = gramian.to(torch.float64)
    t = gramian.shape[0]
    weights = torch.full((t,), 1.0 / t, dtype=torch.float64, device=gramian.device)
    for _ in range(max_iterations):
        gw = gramian @ weights
        vertex = int(torch.argmin(gw))
        vv = weights @ gw  # ||v||^2, v = current combination
        vg = gw[vertex]  # v . g_t
        gg = gramian[vertex, vertex]
        denominator = vv + gg - 2 * vg
        if denominator <= 1e-20:
            break
        gamma = torch.clamp((vv - vg) / denominator, 0.0, 1.0)
        step = gamma * (torch.nn.functional.one_hot(torch.tensor(vertex), t).to(weights) - weights)
        weights = weights + step
        if step.abs().sum() < tolerance:
            break
    return weights


def gradient_normalizers(gramian: torch.Tensor, losses: torch.Tensor, normalization: str) -> torch.Tensor:
    norms = gramian.diagonal().clamp_min(0).sqrt()
    if normalization == "none":
        return torch.ones_like(norms)
    if normalization == "l2":
        return norms
    if normalization == "loss":
        return losses.to(norms.dtype)
    return losses.to(norms.dtype) * norms


class MGDA(GradientCombination):
    def __init__(self, mode: str = "jacobian", normalization: str = "none", rescale: bool = False,
                 max_iterations: int = 250, tolerance: float = 1e-6, jacobian_method: str = "loop"):
        super().__init__(mode, jacobian_method)
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"optim.strategy.normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.normalization, self.rescale = normalization, rescale
        self.max_iterations, self.tolerance = max_iterations, tolerance

    def combination_weights(self, gramian, losses, jacobian=None):
        # a T x T problem: solved on the CPU (a GPU loop would synchronise at every iteration)
        device = gramian.device
        gramian, losses = gramian.detach().cpu().to(torch.float64), losses.detach().cpu()
        n = gradient_normalizers(gramian, losses, self.normalization).clamp_min(1e-12)
        weights = min_norm_weights(gramian / torch.outer(n, n), self.max_iterations, self.tolerance)
        return (weights / n if self.rescale else weights).to(device)
