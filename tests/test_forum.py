"""FORUM against a reference written from the method's equations the way LibMTL's code runs them
(a deep copy stepped by torch's SGD for the lower level, autograd for every gradient, scipy's SLSQP
for the quadratic programme): the direction, the lambda smoothing, the steps of both optimizers."""

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.strategies import FORUM
from medmtl.tasks import refuge_tasks

NAMES = ["glaucoma", "od", "oc", "fovea"]
PHI, INNER_LR, INNER_STEPS = 0.1, 0.05, 3


def task_losses(model, batch):
    outputs = model(batch["image"])
    return torch.stack([t.compute_loss(outputs[t.name], batch) for t in refuge_tasks()])


def reference_direction(model, inner, outer, logits, lambdas, epoch):
    """d = (alpha part, theta part) and the new lambdas, from the equations (module docstring)."""
    alpha = logits.clone().requires_grad_()
    params = list(model.parameters())
    f = (torch.softmax(alpha, 0) * task_losses(model, inner)).sum()
    grads = torch.autograd.grad(f, [alpha, *params], allow_unused=True)
    grad_alpha_f = grads[0]
    grad_theta_f = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads[1:], params)])
    lower = copy.deepcopy(model)
    sgd = torch.optim.SGD(lower.parameters(), lr=INNER_LR)
    s = torch.softmax(logits, 0)
    for _ in range(INNER_STEPS):
        sgd.zero_grad()
        (s * task_losses(lower, inner)).sum().backward()
        sgd.step()
    alpha_n = logits.clone().requires_grad_()
    (grad_alpha_f_n,) = torch.autograd.grad((torch.softmax(alpha_n, 0) * task_losses(lower, inner)).sum(), alpha_n)
    grad_q = torch.cat([grad_alpha_f - grad_alpha_f_n, grad_theta_f]).double()
    rows = []
    for loss in task_losses(model, outer):
        g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        g = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params)]).double()
        rows.append(torch.cat([torch.zeros(len(NAMES), dtype=torch.float64), g / g.norm()]))
    upper = torch.stack(rows)
    q_norm = float(grad_q @ grad_q) + 1e-8
    pi = (PHI - upper @ grad_q / q_norm).numpy()
    a = torch.cat([upper, grad_q[None]]).numpy()
    gram = a @ a.T
    t = len(NAMES)
    result = minimize(
        lambda w: w @ gram @ w - PHI * q_norm * w[t],
        np.full(t + 1, 1.0 / t),
        jac=lambda w: 2 * gram @ w - PHI * q_norm * np.eye(t + 1)[t],
        bounds=[(0, None)] * (t + 1),
        constraints=[
            {"type": "eq", "fun": lambda w: w[:t].sum() - 1},
            {"type": "ineq", "fun": lambda w: w[t] - pi @ w[:t]},
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert result.success, result.message
    new_lambdas = lambdas + (torch.as_tensor(result.x[:t]) - lambdas) / (epoch + 1) ** 0.75
    nu = max(float(new_lambdas @ torch.as_tensor(pi)), 0.0)
    d = new_lambdas @ upper + nu * grad_q
    return d[:t], d[t:], new_lambdas


def forum():
    strategy = FORUM(phi=PHI, inner_lr=INNER_LR, inner_steps=INNER_STEPS)
    strategy.setup(NAMES)
    strategy.double()
    return strategy


@pytest.mark.parametrize("epoch", [0, 3])
def test_direction_and_lambdas_match_the_reference_and_the_network_is_restored(epoch):
    model = tiny_unet()
    reference = copy.deepcopy(model)
    inner, outer = random_batch(1), random_batch(2)
    strategy = forum()
    with torch.no_grad():
        strategy.logits.copy_(torch.tensor([0.3, -0.2, 0.5, 0.0]))
        strategy.lambdas.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    if epoch:
        strategy.on_train_epoch_end(epoch - 1)  # epochs 0 .. epoch - 1 have ended
    before = copy.deepcopy(model.state_dict())
    ctx = PlainContext(model, refuge_tasks(), [torch.optim.SGD(model.parameters(), lr=0.0)])
    alpha_part, theta_part, _ = strategy.direction(ctx, inner, outer)
    expected_alpha, expected_theta, expected_lambdas = reference_direction(
        reference, inner, outer, strategy.logits.detach(), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), epoch
    )
    # the QP solvers (cvxpy's and scipy's SLSQP) agree to about 1e-6
    torch.testing.assert_close(strategy.lambdas, expected_lambdas, rtol=1e-4, atol=1e-5)
    scale = float(expected_theta.abs().max())
    torch.testing.assert_close(theta_part, expected_theta, rtol=1e-3, atol=1e-4 * scale)
    torch.testing.assert_close(alpha_part, expected_alpha, rtol=1e-3, atol=1e-4 * float(expected_alpha.abs().max()))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was not restored after the inner steps"


def test_a_step_moves_the_network_and_the_logits_along_the_direction():
    model = tiny_unet()
    batch = random_batch(3, n=4)
    strategy = forum()
    probe = forum()
    inner = {k: v[:2] for k, v in batch.items()}
    outer = {k: v[2:] for k, v in batch.items()}
    twin = copy.deepcopy(model)
    alpha_part, theta_part, _ = probe.direction(PlainContext(twin, refuge_tasks(), []), inner, outer)
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ctx = PlainContext(model, refuge_tasks(), [torch.optim.SGD(model.parameters(), lr=0.1)])
    logged = strategy.training_step(ctx, batch)
    assert set(logged) == {f"loss/{n}" for n in NAMES}
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(after, start - 0.1 * theta_part, rtol=1e-9, atol=1e-12)
    # the logits' Adam, first step: outer_lr against the sign of the alpha part
    torch.testing.assert_close(strategy.logits, 0.25 - 1e-3 * torch.sign(alpha_part), rtol=0, atol=1e-7)
