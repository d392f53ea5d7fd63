"""GradNorm's weight update against the formulas of docs/methods.md, computed independently."""

import copy

import torch

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.strategies import GradNorm
from medmtl.tasks import refuge_tasks

TASKS = ["glaucoma", "od", "oc", "fovea"]


def make(alpha=1.5):
    strategy = GradNorm(alpha=alpha)
    strategy.setup(TASKS)
    strategy.double()
    return strategy


def test_last_shared_layer_is_the_last_encoder_convolution():
    model = tiny_unet()
    assert model.last_shared_layer() is model.encoder.levels[-1][-3].weight


def test_weight_gradient_and_network_gradient_match_hand_computation():
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    strategy = make()
    with torch.no_grad():
        strategy.task_weights.copy_(torch.tensor([0.5, 1.5, 1.2, 0.8]))
        strategy.initial_losses.copy_(torch.tensor([0.2, 1.0, 0.9, 0.6]))
    optimizer = torch.optim.SGD(list(model.parameters()) + [strategy.task_weights], lr=0.0)
    batch = random_batch(5)
    strategy.training_step(PlainContext(model, tasks, [optimizer]), batch)

    # independent computation, one task at a time
    w = torch.tensor([0.5, 1.5, 1.2, 0.8], dtype=torch.float64)
    l0 = torch.tensor([0.2, 1.0, 0.9, 0.6], dtype=torch.float64)
    layer = reference.encoder.levels[-1][-3].weight
    losses, norms = [], []
    for task in tasks:
        loss = task.compute_loss(reference(batch["image"])[task.name], batch)
        (g,) = torch.autograd.grad(loss, layer)
        losses.append(loss.detach())
        norms.append(g.norm())
    losses, norms = torch.stack(losses), torch.stack(norms)
    g = w * norms
    r = (losses / l0) / (losses / l0).mean()
    target = g.mean() * r**1.5
    expected_weight_grad = torch.sign(g - target) * norms  # d/dw_k sum_j |w_j n_j - target_j|
    torch.testing.assert_close(strategy.task_weights.grad, expected_weight_grad)

    # no second-order leakage: the network's gradient is exactly that of sum_k w_k L_k
    reference.zero_grad()
    outputs = reference(batch["image"])
    total = sum(wk * t.compute_loss(outputs[t.name], batch) for wk, t in zip(w, tasks))
    total.backward()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, msg=name)


def test_weights_are_renormalised_to_sum_to_t_and_initial_losses_recorded():
    tasks = refuge_tasks()
    model = tiny_unet()
    strategy = make()
    optimizer = torch.optim.Adam(list(model.parameters()) + [strategy.task_weights], lr=0.05)
    ctx = PlainContext(model, tasks, [optimizer])
    first = strategy.training_step(ctx, random_batch(1))
    recorded = strategy.initial_losses.clone()
    assert torch.allclose(recorded, torch.stack([first[f"loss/{t}"] for t in TASKS]))
    strategy.training_step(ctx, random_batch(2))
    assert abs(strategy.task_weights.sum().item() - 4.0) < 1e-9
    assert not torch.allclose(strategy.task_weights.detach(), torch.ones(4, dtype=torch.float64)), "weights never moved"
    assert torch.equal(strategy.initial_losses, recorded), "L(0) must stay the first iteration's losses"


def test_state_survives_a_state_dict_round_trip():
    strategy = make()
    with torch.no_grad():
        strategy.task_weights.copy_(torch.tensor([1.0, 2.0, 0.5, 0.5]))
        strategy.initial_losses.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    restored = make()
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.task_weights, strategy.task_weights)
    assert torch.equal(restored.initial_losses, strategy.initial_losses)


def test_a_weight_pushed_below_zero_is_kept_positive_and_the_set_renormalised():
    """Chen et al. 2018 renormalise the weights to sum to T after each step; a weight that an SGD
    step would push below zero is held at min_weight first (by hand: clamp, then scale to sum T)."""
    tasks = refuge_tasks()
    model = tiny_unet()
    strategy = make()
    start = torch.tensor([0.05, 1.5, 1.2, 1.25], dtype=torch.float64)
    with torch.no_grad():
        strategy.task_weights.copy_(start)
        strategy.initial_losses.copy_(torch.tensor([0.2, 1.0, 0.9, 0.6]))
    lr = 10.0
    optimizer = torch.optim.SGD([{"params": list(model.parameters()), "lr": 0.0}, {"params": [strategy.task_weights], "lr": lr}])
    strategy.training_step(PlainContext(model, tasks, [optimizer]), random_batch(5))
    stepped = start - lr * strategy.task_weights.grad
    assert stepped.min() < 0, "the test needs a step that crosses zero"
    kept = stepped.clamp(min=1e-3)  # the default min_weight
    torch.testing.assert_close(strategy.task_weights.detach(), 4 * kept / kept.sum())


def test_weights_stay_positive_and_sum_to_t_over_many_large_steps():
    tasks = refuge_tasks()
    model = tiny_unet()
    strategy = make()
    optimizer = torch.optim.SGD([{"params": list(model.parameters()), "lr": 0.0}, {"params": [strategy.task_weights], "lr": 5.0}])
    ctx = PlainContext(model, tasks, [optimizer])
    for seed in range(6):
        strategy.training_step(ctx, random_batch(seed))
        assert strategy.task_weights.min() > 0
        assert abs(strategy.task_weights.sum().item() - 4.0) < 1e-9


def test_g_is_the_norm_of_the_weighted_gradient_for_any_sign_of_w():
    """G_k = ||w_k g_k|| = |w_k| ||g_k||, so dL_grad/dw_k = sign(G_k - target_k) sign(w_k) ||g_k||."""
    strategy = make()
    with torch.no_grad():
        strategy.task_weights.copy_(torch.tensor([-0.5, 1.5, 1.2, 1.8]))
        strategy.initial_losses.copy_(torch.ones(4))
    losses = torch.tensor([3.0, 1.0, 0.5, 0.8], dtype=torch.float64)  # task 0 far behind: G_0 < target_0
    norms = torch.tensor([3.0, 1.0, 0.5, 2.0], dtype=torch.float64)
    grad = strategy.weight_gradient(losses, norms, torch.arange(4))
    w = torch.tensor([-0.5, 1.5, 1.2, 1.8], dtype=torch.float64)
    g = w.abs() * norms
    r = losses / losses.mean()
    target = g.mean() * r**1.5
    torch.testing.assert_close(grad, torch.sign(g - target) * torch.sign(w) * norms)
