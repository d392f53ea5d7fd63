"""Auto-Lambda: the finite-difference hypergradient against the exact one (second-order autograd
through the virtual step), the network restored exactly, and the weights stepped against it."""

import copy

import pytest
import torch
from torch.func import functional_call

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.strategies import AutoLambda
from medmtl.tasks import VALIDATION, refuge_tasks

NAMES = ["glaucoma", "od", "oc", "fovea"]


def exact_hypergradient(model, train, validation, weights, alpha, primary):
    """d/dlambda sum_{p in primary} L_p^val(theta - alpha grad_theta sum_k lambda_k L_k^train(theta)),
    differentiated through the virtual step (create_graph) instead of by finite differences."""
    tasks = refuge_tasks()
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    lam = weights.clone().requires_grad_()
    outputs = functional_call(model, (params, buffers), (train["image"],))
    total = sum(lam[k] * t.compute_loss(outputs[t.name], train) for k, t in enumerate(tasks))
    grads = torch.autograd.grad(total, list(params.values()), create_graph=True, allow_unused=True)
    moved = {k: p - alpha * g if g is not None else p for (k, p), g in zip(params.items(), grads)}
    outputs = functional_call(model, (moved, buffers), (validation["image"],))
    validation_loss = sum(t.compute_loss(outputs[t.name], validation) for t in tasks if t.name in primary)
    (hyper,) = torch.autograd.grad(validation_loss, lam)
    return hyper


@pytest.mark.parametrize("primary", [None, ["glaucoma"]])
def test_finite_difference_hypergradient_matches_the_exact_one(primary):
    """In float64 with a small difference step the central difference converges to the exact
    value (the authors' step, 0.01, leaves a few percent of curvature error on this network)."""
    model = tiny_unet()
    reference = copy.deepcopy(model)
    train, validation = random_batch(1), random_batch(2)
    strategy = AutoLambda(primary=primary, init=0.1, virtual_lr=0.5, finite_difference=1e-6)
    strategy.setup(NAMES)
    strategy.double()
    with torch.no_grad():
        strategy.weights.copy_(torch.tensor([0.1, 0.3, 0.2, 0.4]))
    ctx = PlainContext(model, refuge_tasks(), [torch.optim.SGD(model.parameters(), lr=0.0)])
    before = copy.deepcopy(model.state_dict())
    ours = strategy.hypergradient(ctx, train, validation)
    expected = exact_hypergradient(reference, train, validation, strategy.weights, 0.5, primary or NAMES)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-9)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was not restored after the look-ahead"


def test_auxiliary_mode_changes_the_hypergradient_and_the_weights_step_against_it():
    train, validation = random_batch(3), random_batch(4)
    results = []
    for primary in (None, ["glaucoma"]):
        model = tiny_unet()
        strategy = AutoLambda(primary=primary, meta_lr=1e-2, virtual_lr=0.5)
        strategy.setup(NAMES)
        strategy.double()
        ctx = PlainContext(
            model, refuge_tasks(), [torch.optim.SGD(model.parameters(), lr=0.0)], task_batches={VALIDATION: iter([validation])}
        )
        hyper = strategy.hypergradient(ctx, train, validation)
        strategy.training_step(ctx, train)
        # Adam's first step moves each weight by meta_lr against the sign of its gradient
        torch.testing.assert_close(strategy.weights, 0.1 - 1e-2 * torch.sign(hyper), rtol=0, atol=1e-6)
        results.append(hyper)
    assert not torch.allclose(results[0], results[1])


def exact_hypergradient_with_momentum(model, optimizer, train, validation, weights, alpha):
    """The authors' virtual step theta' = theta - alpha (mu b + g + wd theta) (lorenmt/auto-lambda:
    mu b = momentum times SGD's momentum buffer), differentiated exactly through theta'."""
    tasks = refuge_tasks()
    group = optimizer.param_groups[0]
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    lam = weights.clone().requires_grad_()
    outputs = functional_call(model, (params, buffers), (train["image"],))
    total = sum(lam[k] * t.compute_loss(outputs[t.name], train) for k, t in enumerate(tasks))
    grads = torch.autograd.grad(total, list(params.values()), create_graph=True, allow_unused=True)
    moved = {}
    for (name, p), g in zip(params.items(), grads):
        momentum = group["momentum"] * optimizer.state[p]["momentum_buffer"]
        moved[name] = p - alpha * (momentum + (g if g is not None else 0) + group["weight_decay"] * p)
    outputs = functional_call(model, (moved, buffers), (validation["image"],))
    validation_loss = sum(t.compute_loss(outputs[t.name], validation) for t in tasks)
    (hyper,) = torch.autograd.grad(validation_loss, lam)
    return hyper


def test_the_virtual_step_carries_the_optimizers_momentum_and_weight_decay_as_the_authors_code():
    tasks = refuge_tasks()
    model = tiny_unet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    sum(t.compute_loss(model(random_batch(7)["image"])[t.name], random_batch(7)) for t in tasks).backward()
    optimizer.step()  # a momentum buffer for every parameter
    optimizer.zero_grad()
    train, validation = random_batch(1), random_batch(2)
    strategy = AutoLambda(init=0.1, finite_difference=1e-6)
    strategy.setup(NAMES)
    strategy.double()
    ours = strategy.hypergradient(PlainContext(model, tasks, [optimizer]), train, validation)
    expected = exact_hypergradient_with_momentum(model, optimizer, train, validation, strategy.weights, 0.3)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-9)
    plain = AutoLambda(init=0.1, finite_difference=1e-6, virtual_momentum=False)
    plain.setup(NAMES)
    plain.double()
    without = plain.hypergradient(PlainContext(model, tasks, [optimizer]), train, validation)
    assert (without - expected).abs().max() > 1e-3 * expected.abs().max(), "momentum made no difference to compare"
