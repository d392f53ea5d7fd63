"""MOML: the upper-level gradients against autograd through the virtual step, the logits' direction
against the min-norm optimality conditions (scipy's NNLS for the convex hull), the network restored
and then stepped with the new weights."""

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from torch.func import functional_call

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.strategies import MOML
from medmtl.tasks import refuge_tasks

NAMES = ["glaucoma", "od", "oc", "fovea"]
INNER_LR = 0.5


def exact_upper_level_gradients(model, inner, outer, logits):
    """d F_t(theta - lr sum_k softmax(alpha)_k grad L_k^inner(theta)) / d alpha by autograd."""
    tasks = refuge_tasks()
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    outputs = functional_call(model, (params, buffers), (inner["image"],))
    inner_gradients = [
        torch.autograd.grad(t.compute_loss(outputs[t.name], inner), list(params.values()), retain_graph=True, allow_unused=True)
        for t in tasks
    ]
    alpha = logits.clone().requires_grad_()
    s = torch.softmax(alpha, dim=0)
    moved = {}
    for i, (name, p) in enumerate(params.items()):
        step = sum(s[k] * g[i] for k, g in enumerate(inner_gradients) if g[i] is not None)
        moved[name] = p.detach() - INNER_LR * step
    outputs = functional_call(model, (moved, buffers), (outer["image"],))
    rows = [torch.autograd.grad(t.compute_loss(outputs[t.name], outer), alpha, retain_graph=True)[0] for t in tasks]
    return torch.stack(rows)


def strategy(**options) -> MOML:
    moml = MOML(inner_lr=INNER_LR, **options)
    moml.setup(NAMES)
    moml.double()
    return moml


def test_upper_level_gradients_are_autograds_through_the_virtual_step_and_the_network_is_restored():
    model = tiny_unet()
    reference = copy.deepcopy(model)
    inner, outer = random_batch(1), random_batch(2)
    moml = strategy()
    with torch.no_grad():
        moml.logits.copy_(torch.tensor([0.3, -0.2, 0.5, 0.0]))
    ctx = PlainContext(model, refuge_tasks(), [torch.optim.SGD(model.parameters(), lr=0.0)])
    before = copy.deepcopy(model.state_dict())
    ours = moml.upper_level_gradients(ctx, inner, outer)
    expected = exact_upper_level_gradients(reference, inner, outer, moml.logits)
    torch.testing.assert_close(ours, expected, rtol=1e-7, atol=1e-12)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was not restored after the virtual step"


@pytest.mark.parametrize("normalization", ["l2", "none"])
def test_the_logits_direction_is_the_min_norm_point_of_the_normalised_rows(normalization):
    model = tiny_unet()
    inner, outer = random_batch(3), random_batch(4)
    moml = strategy(normalization=normalization)
    ctx = PlainContext(model, refuge_tasks(), [torch.optim.SGD(model.parameters(), lr=0.0)])
    rows = exact_upper_level_gradients(copy.deepcopy(model), inner, outer, moml.logits)
    if normalization == "l2":
        rows = rows / rows.norm(dim=1, keepdim=True)
    direction = moml.logit_gradient(ctx, inner, outer)
    # in the convex hull of the rows: direction = R^T w, w >= 0, sum w = 1 (non-negative least squares)
    system = np.vstack([rows.T.numpy(), np.ones((1, len(NAMES)))])
    weights, residual = nnls(system, np.concatenate([direction.numpy(), [1.0]]))
    assert residual < 1e-8 * max(1.0, float(rows.abs().max()))
    # and the min-norm point of the hull: every row's projection on it is at least its squared norm
    squared_norm = float(direction @ direction)
    assert (rows @ direction >= squared_norm - 1e-9 * float(rows.abs().max()) ** 2).all()


def test_a_step_moves_the_logits_by_adams_first_step_and_trains_the_network_with_the_new_weights():
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batch = random_batch(5, n=4)
    moml = strategy(outer_lr=1e-2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = PlainContext(model, refuge_tasks(), [optimizer])
    inner = {k: v[:2] for k, v in batch.items()}
    outer = {k: v[2:] for k, v in batch.items()}
    direction = moml.logit_gradient(PlainContext(copy.deepcopy(model), refuge_tasks(), [optimizer]), inner, outer)
    moml.training_step(ctx, batch)
    # Adam's first step: each logit moves by outer_lr against the sign of its gradient
    expected_logits = 0.25 - 1e-2 * torch.sign(direction)
    torch.testing.assert_close(moml.logits, expected_logits, rtol=0, atol=1e-7)
    # the network: one SGD step on sum_k softmax(new logits)_k L_k over the whole batch, from theta
    weights = torch.softmax(expected_logits, dim=0)
    outputs = reference(batch["image"])
    total = sum(w * t.compute_loss(outputs[t.name], batch) for w, t in zip(weights, refuge_tasks()))
    plain = torch.optim.SGD(reference.parameters(), lr=0.1)
    plain.zero_grad()
    total.backward()
    plain.step()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9, msg=name)


def test_a_batch_of_one_cannot_be_split():
    from medmtl.errors import ConfigError

    model = tiny_unet()
    ctx = PlainContext(model, refuge_tasks(), [torch.optim.SGD(model.parameters(), lr=0.1)])
    with pytest.raises(ConfigError, match="optim=moml splits each batch in two"):
        strategy().training_step(ctx, random_batch(6, n=1))
