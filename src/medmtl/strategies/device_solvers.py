"""The small T x T problems of UPGrad, DualProj, IMTL-G and CAGrad solved where the Gramian lives.

torchjd solves them on the host: UPGrad and DualProj hand G to ``quadprog``, CAGrad to ``cvxpy``
(CLARABEL), IMTL-G branches on a tensor value in Python. On a GPU each of these is a host round
trip per step: the host waits until the queue has drained, copies G, solves, copies the weights
back, and the GPU idles meanwhile. The solvers here give the same solutions (to solver tolerance;
tests/test_device_solvers.py checks them against torchjd's) with a fixed sequence of batched tensor
operations and no value-dependent Python branch: nothing waits for the device, and the step can be
captured or compiled.

The method is the same for the two constrained problems: enumerate the faces. The minimiser of a
convex problem over a polyhedron is the stationary point of the problem restricted to the face it
lies on; where that point has a closed form, computing it on every one of the 2^T faces at once
(one batched linear solve) and keeping, among the candidates that are feasible, the one with the
least objective gives the minimiser exactly (its face is among them, and every feasible candidate
is a feasible point, so none can beat it). That is 2^T small systems: trivial for the task
counts of multi-task learning (16 for T = 4, 1024 for T = 10); :data:`MAX_TASKS` bounds it, above
which :func:`fits` says to use the host solver.

Computation is in float64 (as quadprog's and cvxpy's), the weights are returned in G's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchjd.aggregation import Weighting
from torchjd.linalg import DualConeProjector

#: above this many tasks the 2^T enumeration is not worth it: use the host solvers
MAX_TASKS = 10


def fits(task_count: int) -> bool:
    """Whether the device solvers handle ``task_count`` tasks (2^T candidate faces)."""
    return task_count <= MAX_TASKS


def free_masks(size: int, device: torch.device) -> Tensor:
    """Every subset of ``range(size)`` as a row of a ``[2^size, size]`` float64 0/1 matrix (1: the
    coordinate is free, i.e. off its bound, on that face)."""
    codes = torch.arange(2**size, device=device)
    bits = torch.arange(size, device=device)
    return ((codes[:, None] >> bits) & 1).to(torch.float64)


def normalized(gramian: Tensor, eps: float) -> Tensor:
    """G / tr(G): the Gramian of J / ||J||_F, or zeros when tr(G) < ``eps`` (torchjd's
    normalisation, without branching on the value)."""
    trace = gramian.diagonal().sum()
    return torch.where(trace < eps, torch.zeros_like(gramian), gramian / trace)


def best_feasible(violation: Tensor, objective: Tensor, tolerance: float) -> Tensor:
    """Per column, the index of the candidate row with the least ``objective`` among those whose
    constraint ``violation`` is at most ``tolerance``; where rounding leaves none within tolerance,
    the least violating one."""
    feasible = violation <= tolerance
    ranked = torch.where(feasible, objective, torch.full_like(objective, torch.inf)).argmin(0)
    return torch.where(feasible.any(0), ranked, violation.argmin(0))


class DeviceDualConeProjector(DualConeProjector):
    r"""The dual-cone projection weights of UPGrad and DualProj (Quinton and Rey 2024) on G's device.

    For each row u of U it solves, like torchjd's ``QuadprogProjector`` (same normalisation
    G <- G / tr(G) and regularisation G <- G + reg_eps I),

    .. math:: \min_v v^\top G v \quad \text{s.t.} \quad v \succeq u.

    On the face where the coordinates in F are free and the others sit at their bound,
    stationarity gives (G v)_F = 0 and v_{not F} = u_{not F}: one linear system
    [diag(f) G + diag(1 - f)] v = (1 - f) * u per face (invertible: G + reg_eps I is positive
    definite). The answer is the feasible (v >= u) candidate of least v^T G v.
    """

    def __init__(self, *, norm_eps: float = 0.0001, reg_eps: float = 0.0001, tolerance: float = 1e-9) -> None:
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.tolerance = tolerance

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:
        size = G.shape[0]
        gramian = normalized(G.to(torch.float64), self.norm_eps)
        gramian = gramian + self.reg_eps * torch.eye(size, dtype=gramian.dtype, device=gramian.device)
        targets = U.to(torch.float64).reshape(-1, size)  # [B, T]
        free = free_masks(size, G.device)  # [K, T]
        systems = free[:, :, None] * gramian + torch.diag_embed(1.0 - free)  # [K, T, T]
        rhs = (1.0 - free)[:, None, :] * targets  # [K, B, T]
        points = torch.linalg.solve_ex(systems[:, None], rhs[..., None]).result.squeeze(-1)  # [K, B, T]
        violation = (targets - points).clamp_min(0.0).amax(-1)  # [K, B]: how far below u
        objective = (points * (points @ gramian)).sum(-1)
        chosen = best_feasible(violation.nan_to_num(torch.inf), objective, self.tolerance)  # [B]
        weights = points.gather(0, chosen[None, :, None].expand(1, -1, size))[0]
        return weights.reshape(U.shape).to(G.dtype)


class DeviceIMTLGWeighting(Weighting):
    r"""IMTL-G's weights (Liu et al. 2021, as generalised by Quinton and Rey 2024) without a host branch.

    a = G^+ d / (1^T G^+ d), d_i = sqrt(G_ii) (the gradient norms); a = 0 when |1^T G^+ d| < 1e-12.
    torchjd computes the same with a Python ``if`` on the sum (a host round trip on a GPU); here the
    zero case is a ``torch.where``. The pseudo-inverse is the symmetric one (eigendecomposition),
    in float64, dropping the eigenvalues below min(1000 eps, sqrt(eps)) times the largest, eps that of
    the Gramian's own dtype: a Gramian formed in float32 carries rounding of about 1e-7 of its largest
    eigenvalue, so where the task gradients are linearly dependent (rank-deficient G) float64's default
    cut-off inverted that noise and gave weights off by up to 220% (against the same gradients in
    float64). The cut-off scales with the dtype's eps, not its square root: a float64 Gramian keeps
    genuine eigenvalues far below sqrt(eps64) = 1.5e-8 of the largest (a tiny U-Net's four task
    gradients have one at 7e-9), and IMTL-G's equal projections need them.
    """

    def forward(self, gramian: Tensor, /) -> Tensor:
        matrix = gramian.to(torch.float64)
        norms = matrix.diagonal().clamp_min(0.0).sqrt()
        eps = torch.finfo(gramian.dtype).eps
        cutoff = min(1000 * eps, eps**0.5)
        direction = torch.linalg.pinv(matrix, rtol=cutoff, hermitian=True) @ norms
        total = direction.sum()
        safe = torch.where(total.abs() < 1e-12, torch.ones_like(total), total)
        weights = torch.where(total.abs() < 1e-12, torch.zeros_like(direction), direction / safe)
        return weights.to(gramian.dtype)


class DeviceCAGradWeighting(Weighting):
    r"""CAGrad's weights (Liu et al. 2021) with its inner problem solved in closed form per face.

    With G normalised as torchjd does (G / tr G), a = G 1 / T (so a^T w = g_0^T g_w, g_0 the mean
    gradient) and phi = c ||g_0||, CAGrad's dual problem is

    .. math:: \min_{w \in \Delta} \; a^\top w + \phi \sqrt{w^\top G w}.

    On the face with support S (w_i > 0 exactly for i in S), with x = G_SS^{-1} 1, y = G_SS^{-1} a_S,
    p = 1^T x, q = 1^T y, r = a_S^T y, stationarity a_S + phi G_SS w_S / s = mu 1 (s = ||g_w||),
    the simplex constraint and s^2 = w^T G w give

    .. math:: \mu = (q + \sqrt{q^2 - p r + p \phi^2}) / p, \qquad w_S = (\mu x - y) / (\mu p - q).

    Every candidate sums to 1; the answer is the candidate with w >= 0 of least objective (faces
    whose quadratic has no real root give a point that is merely feasible, never a better one).
    c must be positive (c = 0 is the plain mean). The weights are then
    1/T + (phi / s) w (torchjd: zeros when s < norm_eps, "on the Pareto front"). G restricted to a
    face must be invertible; ``reg_eps`` (relative to tr G = 1) is added to its diagonal for the
    solves only, so rank-deficient Gramians stay within solver tolerance of torchjd's answer.
    """

    def __init__(self, c: float, norm_eps: float = 0.0001, reg_eps: float = 1e-12, tolerance: float = 1e-9) -> None:
        super().__init__()
        if c <= 0:
            raise ValueError(f"c must be positive (c = 0 is the mean of the gradients), got {c}.")
        self.c = c
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.tolerance = tolerance

    def forward(self, gramian: Tensor, /) -> Tensor:
        size = gramian.shape[0]
        matrix = normalized(gramian.to(torch.float64), self.norm_eps)
        ones = torch.ones(size, dtype=matrix.dtype, device=matrix.device)
        linear = matrix @ ones / size  # a
        phi = self.c * (ones @ matrix @ ones).clamp_min(0.0).sqrt() / size  # c ||g_0||: ||g_0||^2 = 1^T G 1 / T^2
        support = free_masks(size, gramian.device)[1:]  # [K, T], the empty face excluded
        regular = matrix + self.reg_eps * torch.eye(size, dtype=matrix.dtype, device=matrix.device)
        systems = support[:, :, None] * regular * support[:, None, :] + torch.diag_embed(1.0 - support)
        rhs = torch.stack([support, support * linear], -1)  # [K, T, 2]: 1_S and a_S
        solved = torch.linalg.solve_ex(systems, rhs).result  # x and y, zero off the support
        x, y = solved[..., 0], solved[..., 1]
        p, q, r = x.sum(-1), y.sum(-1), (linear * y).sum(-1)
        mu = (q + (q * q - p * r + p * phi * phi).clamp_min(0.0).sqrt()) / p
        points = (mu[:, None] * x - y) / (mu * p - q)[:, None]  # [K, T]
        spread = (points * (points @ matrix)).sum(-1).clamp_min(0.0).sqrt()  # s = ||g_w||
        violation = (-points).clamp_min(0.0).amax(-1)
        objective = points @ linear + phi * spread
        chosen = best_feasible(violation.nan_to_num(torch.inf)[:, None], objective.nan_to_num(torch.inf)[:, None], self.tolerance)
        best = points.index_select(0, chosen)[0]  # index_select, not points[i]: no host read of i
        norm = spread.index_select(0, chosen)[0]
        weights = ones / size + phi / norm.clamp_min(1e-30) * best
        weights = torch.where(norm >= self.norm_eps, weights, torch.zeros_like(weights))
        return weights.to(gramian.dtype)
