"""NTKMTL (Qin et al. 2025) against a step written by hand from the authors' update: per-task
gradients by one backward each, weights T (tr G / G_kk)^p from their shared parts, the shared
direction clipped to max_norm as the authors' code clips it, heads on the plain sum."""

import copy

import pytest
import torch

from helpers import PlainContext, per_task_gradients, random_batch, sgd_step_along, tiny_unet
from medmtl.strategies import NTKMTL
from medmtl.tasks import refuge_tasks

CASES = [(0.5, 0.0, "jacobian"), (0.75, 1e-3, "jacobian"), (0.5, 0.0, "gramian")]


@pytest.mark.parametrize(("ntk_exp", "max_norm", "mode"), CASES)
def test_two_steps_equal_the_authors_update_by_hand(ntk_exp, max_norm, mode):
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batch = random_batch(7)
    lr = 0.05
    strategy = NTKMTL(ntk_exp=ntk_exp, max_norm=max_norm, mode=mode)
    strategy.setup([t.name for t in tasks])
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=lr)])
    params = list(reference.parameters())
    shared = torch.cat([torch.full((p.numel(),), any(p is q for q in reference.shared_parameters())) for p in params])
    for _ in range(2):
        logged = strategy.training_step(ctx, batch)
        jacobian = per_task_gradients(reference, batch, tasks, params)
        kernel = (jacobian[:, shared] ** 2).sum(dim=1)  # G_kk = |g_k|^2 over the shared parameters
        weights = len(tasks) * (kernel.sum() / kernel) ** ntk_exp
        direction = jacobian.sum(dim=0)  # the heads: each its own task's gradient
        direction[shared] = weights @ jacobian[:, shared]
        if max_norm > 0:
            norm = direction[shared].norm()
            assert norm > max_norm, "the test needs a direction that is clipped"
            direction[shared] *= max_norm / norm
        sgd_step_along(params, direction, lr)
        logged_weights = torch.stack([logged[f"weight/{t.name}"] for t in tasks]).double()
        torch.testing.assert_close(logged_weights, weights, rtol=1e-5, atol=0)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_square_root_weights_make_every_task_gradient_the_same_length():
    """With p = 1/2, a_k g_k = T sqrt(sum_j |g_j|^2) g_k / |g_k|: equal norms, a property of the
    paper's weighting that does not depend on how it is computed."""
    g = torch.randn(3, 50, dtype=torch.float64)
    g[1] *= 40.0
    weights = NTKMTL(ntk_exp=0.5).combination_weights(g @ g.T, torch.ones(3))
    lengths = (weights[:, None] * g).norm(dim=1)
    torch.testing.assert_close(lengths, torch.full((3,), 3 * g.norm().item(), dtype=torch.float64))


def test_a_task_with_a_zero_gradient_gets_no_weight_and_no_nan():
    g = torch.randn(3, 20, dtype=torch.float64)
    g[2] = 0.0
    weights = NTKMTL().combination_weights(g @ g.T, torch.ones(3))
    assert torch.isfinite(weights).all() and weights[2] == 0
