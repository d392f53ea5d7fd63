"""``mgda`` (Sener & Koltun 2018; survey 3.1.5): the min-norm point of the convex hull of the
task gradients.

w* = argmin_{w in simplex} || sum_k w_k g_k ||^2 = argmin w^T G w, a T x T quadratic programme on the
Gramian G = J J^T. Two solvers (``solver``):

- ``exact`` (default): Wolfe's (1976) nearest-point algorithm, an active-set method that ends in
  finitely many steps at the optimum (up to float64 round-off). It keeps a support S and weights
  w > 0 on it; a major step adds the vertex t = argmin_k (G w)_k while w^T G w - (G w)_t > tol; a
  minor step solves the affine problem on S, [G_SS 1; 1^T 0] [a; -l] = [0; 1], and moves from w
  towards a as far as w stays >= 0, dropping the indices that reach 0. At the end the optimality
  (KKT) conditions hold: (G w)_k >= w^T G w for every k, with equality on the support.
- ``frank_wolfe``: the authors' solver (Sener & Koltun, Algorithm 2): start at the uniform point;
  move towards the vertex e_t, t = argmin_k (G w)_k, with the exact line search of the two-point
  problem; stop after ``max_iterations`` or when the step is below ``tolerance``. With three or more
  tasks it can stop measurably above the minimum (up to 5.5% in our tests with the defaults).

For two tasks both are exact: w_1 = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1).

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


SOLVERS = ("exact", "frank_wolfe")


def exact_min_norm_weights(gramian: torch.Tensor, tolerance: float = 1e-12) -> torch.Tensor:
    """Wolfe's nearest-point algorithm on the Gramian: min_w w^T G w on the simplex, exactly.

    ``tolerance`` is relative to max_k G_kk (the scale of the problem). Affinely dependent supports
    (a singular affine system: repeated or collinear gradients) are solved in the least-squares sense.
    """
    gramian = gramian.to(torch.float64)
    t = gramian.shape[0]
    scale = float(gramian.diagonal().max().clamp_min(1e-300))
    tol = tolerance * scale
    start = int(torch.argmin(gramian.diagonal()))
    weights = torch.zeros(t, dtype=torch.float64, device=gramian.device)
    weights[start] = 1.0
    support = [start]
    for _ in range(50 * t + 50):  # every major step lowers the objective strictly: finite; a guard
        gw = gramian @ weights
        vertex = int(torch.argmin(gw))
        if weights @ gw - gw[vertex] <= tol or vertex in support:
            break
        support.append(vertex)
        while True:  # minor steps: the affine minimiser of the support, clipped to the simplex
            s = torch.tensor(support, device=gramian.device)
            k = len(support)
            system = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=gramian.device)
            system[:k, :k] = gramian[s][:, s]
            system[:k, k] = system[k, :k] = 1.0
            rhs = torch.zeros(k + 1, dtype=torch.float64, device=gramian.device)
            rhs[k] = 1.0
            affine = torch.linalg.lstsq(system, rhs.unsqueeze(1), driver="gelsd").solution[:k, 0]
            current = weights[s]
            if (affine > 0).all():
                weights = torch.zeros_like(weights)
                weights[s] = affine / affine.sum()
                break
            blocking = affine <= 0
            theta = torch.min(current[blocking] / (current[blocking] - affine[blocking]))
            moved = current + theta * (affine - current)
            weights = torch.zeros_like(weights)
            weights[s] = moved.clamp_min(0)
            support = [i for i, w in zip(support, moved.tolist()) if w > 1e-15]
            weights /= weights.sum()
    return weights


def min_norm_weights(
    gramian: torch.Tensor, max_iterations: int = 250, tolerance: float = 1e-6, solver: str = "exact"
) -> torch.Tensor:
    """min_w w^T G w on the simplex; ``frank_wolfe`` is Sener & Koltun's Algorithm 2. Both solvers
    iterate with value-dependent stops, so they run on a host copy of G (one device-to-host copy per
    call, not a host read per iteration); the weights come back on G's device."""
    if solver not in SOLVERS:
        raise ConfigError(f"optim.strategy.solver must be one of {SOLVERS}, got {solver!r}.")
    host = gramian.detach().to("cpu", torch.float64)
    if solver == "exact":
        return exact_min_norm_weights(host).to(gramian.device)
    return frank_wolfe_weights(host, max_iterations, tolerance).to(gramian.device)


def frank_wolfe_weights(gramian: torch.Tensor, max_iterations: int, tolerance: float) -> torch.Tensor:
    """Sener and Koltun's Frank-Wolfe iterations for min_w w^T G w on the simplex, from 1/T."""
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
    def __init__(
        self,
        mode: str = "jacobian",
        normalization: str = "none",
        rescale: bool = False,
        max_iterations: int = 250,
        tolerance: float = 1e-6,
        jacobian_method: str = "loop",
        solver: str = "exact",
    ):
        super().__init__(mode, jacobian_method)
        if solver not in SOLVERS:
            raise ConfigError(f"optim.strategy.solver must be one of {SOLVERS}, got {solver!r}.")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"optim.strategy.normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.normalization, self.rescale = normalization, rescale
        self.max_iterations, self.tolerance, self.solver = max_iterations, tolerance, solver

    def combination_weights(self, gramian, losses, jacobian=None, names=None):
        # a T x T problem: solved on the CPU (a GPU loop would synchronise at every iteration)
        device = gramian.device
        gramian, losses = gramian.detach().cpu().to(torch.float64), losses.detach().cpu()
        n = gradient_normalizers(gramian, losses, self.normalization).clamp_min(1e-12)
        weights = min_norm_weights(gramian / torch.outer(n, n), self.max_iterations, self.tolerance, self.solver)
        return (weights / n if self.rescale else weights).to(device)
