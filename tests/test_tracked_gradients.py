"""MoCo against its Algorithm 1 by hand, and the simplex projection against a generic solver."""

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from helpers import PlainContext, per_task_gradients, random_batch, tiny_unet
from medmtl.strategies import MultiObjectiveCorrection
from medmtl.strategies.moco import project_onto_simplex
from medmtl.tasks import refuge_tasks


def simplex_projection_by_solver(v: np.ndarray) -> np.ndarray:
    """argmin ||x - v||^2 on the simplex, by SLSQP."""
    result = minimize(
        lambda x: ((x - v) ** 2).sum(),
        np.full_like(v, 1 / v.size),
        jac=lambda x: 2 * (x - v),
        bounds=[(0, None)] * v.size,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return result.x


@pytest.mark.parametrize("seed", range(4))
def test_simplex_projection_is_the_nearest_point(seed):
    v = np.random.default_rng(seed).normal(size=5) * 2
    ours = project_onto_simplex(torch.tensor(v)).numpy()
    np.testing.assert_allclose(ours, simplex_projection_by_solver(v), atol=1e-6)
    assert ours.min() >= 0 and ours.sum() == pytest.approx(1.0)


def test_moco_follows_algorithm_1_by_hand():
    """Fernando et al. 2023: y_k <- y_k - beta_t (y_k - g_k), lambda <- Proj(lambda - gamma_t (Y^T Y +
    rho I) lambda), shared update Y lambda; three iterations on different batches (weights fixed by
    lr = 0, so each batch's gradients are taken at the same point)."""
    tasks = refuge_tasks()
    names = [t.name for t in tasks]
    model = tiny_unet()
    reference = copy.deepcopy(model)
    beta, beta_sigma, gamma, gamma_sigma, rho = 0.6, 0.5, 0.3, 0.5, 0.1
    strategy = MultiObjectiveCorrection(beta, beta_sigma, gamma, gamma_sigma, rho)
    strategy.setup(names)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.0)])
    shared = reference.shared_parameters()
    y = torch.zeros(4, sum(p.numel() for p in shared), dtype=torch.float64)
    weights = torch.full((4,), 0.25, dtype=torch.float64)
    for t, seed in enumerate((1, 2, 3), start=1):
        batch = random_batch(seed)
        strategy.training_step(ctx, batch)
        g = per_task_gradients(reference, batch, tasks, shared)
        y = y - beta / t**beta_sigma * (y - g)
        step = weights - gamma / t**gamma_sigma * (y @ y.T + rho * torch.eye(4, dtype=torch.float64)) @ weights
        weights = torch.tensor(simplex_projection_by_solver(step.numpy()), dtype=torch.float64)
    torch.testing.assert_close(strategy.weights, weights, atol=1e-6, rtol=1e-5)
    expected = weights @ y
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in model.shared_parameters()]), expected, atol=1e-8, rtol=1e-5)
    assert not torch.allclose(weights, torch.full((4,), 0.25, dtype=torch.float64)), "the weights never moved"


def test_moco_trains_a_float32_module_whose_buffers_were_cast():
    """A module cast to float32 (``.to(torch.float32)``, as a float32 device check or a ``-true``
    precision does) casts MoCo's weights too; its float64 update must still combine with them."""
    tasks = refuge_tasks()
    model = tiny_unet(dtype=torch.float32)
    strategy = MultiObjectiveCorrection()
    strategy.setup([t.name for t in tasks])
    strategy.to(torch.float32)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.01)])
    for seed in (1, 2):
        strategy.training_step(ctx, random_batch(seed, dtype=torch.float32))
    assert strategy.weights.dtype == torch.float32 and torch.isfinite(strategy.weights).all()
    assert strategy.weights.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_simplex_projection_reads_nothing_from_the_device():
    """On PyTorch's meta device any host read (``int()``, ``.item()``, a branch on a value) raises:
    the projection in MoCo's step never makes a GPU wait."""
    projected = project_onto_simplex(torch.empty(5, device="meta"))
    assert projected.shape == (5,) and projected.device.type == "meta"


@pytest.mark.parametrize("vector", [[3.0, 3.0, 3.0], [10.0, -10.0, 0.0], [0.2, 0.3, 0.5], [-1.0, -1.0, -5.0]])
def test_simplex_projection_of_ties_points_inside_and_far_outside(vector):
    v = np.array(vector)
    np.testing.assert_allclose(project_onto_simplex(torch.tensor(v)).numpy(), simplex_projection_by_solver(v), atol=1e-6)
