"""Selective task-group updates (Jeong & Yoon 2025) against hand computations of the authors' code:
the affinity update on numbers worked out by hand, the grouping on affinity maps whose groups are
known and against scikit-learn's Affinity Propagation run here, and whole iterations against a
reference network stepped by hand along each group's gradient, with the affinity map rebuilt from
the reference's own losses under both ways of crediting a loss change."""

import copy

import numpy as np
import pytest
import torch
from sklearn.cluster import AffinityPropagation

from helpers import PlainContext, per_task_gradients, random_batch, sgd_step_along, tiny_unet
from medmtl.errors import ConfigError
from medmtl.strategies import SelectiveGroupUpdates
from medmtl.strategies.selective_update import affinity_propagation_groups
from medmtl.tasks import refuge_tasks


def strategy_for(names, **options) -> SelectiveGroupUpdates:
    strategy = SelectiveGroupUpdates(**options)
    strategy.setup(list(names))
    return strategy


def test_one_affinity_update_worked_out_by_hand():
    """Group {0, 1} credited, beta = 1/2, A = 0. r_t = (1 - L_t / L_prev_t) / 2:
    r_0 = (1 - 1/2) / 2 = 1/4, r_1 = (1 - 3/2) / 2 = -1/4, r_2 = (1 - 3/4) / 2 = 1/8, task 3 absent.
    Row 0: A00 = r_0 / 2 (r_0 >= 0); A01: r_1 r_0 < 0 -> -max(r_1, r_0) / 2 = -1/8; A02 = r_2 / 2.
    Row 1: A10 = -max(r_0, r_1) / 2 = -1/8; A11 stays 0 (r_1 < 0); A12 = r_2 / 2. Rows 2, 3: 0."""
    strategy = strategy_for("abcd", affinity_decay=0.5)
    strategy.update_affinity([0, 1], {0: 1.0, 1: 1.5, 2: 3.0}, {0: 2.0, 1: 1.0, 2: 4.0, 3: 1.0})
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[0, 0], expected[0, 1], expected[0, 2] = 0.125, -0.125, 0.0625
    expected[1, 0], expected[1, 2] = -0.125, 0.0625
    torch.testing.assert_close(strategy.affinity, expected)


BLOCKS = np.array([[1.0, 0.9, -0.5, -0.4], [0.8, 1.0, -0.6, -0.5], [-0.5, -0.4, 0.5, 0.45], [-0.3, -0.5, 0.4, 0.5]])


def test_tasks_that_help_each_other_are_grouped_and_the_labels_are_scikit_learns():
    labels = affinity_propagation_groups(BLOCKS)
    assert labels is not None
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]
    x = BLOCKS / np.diag(BLOCKS)[np.newaxis, :]  # their normalisation: column i / A[i, i], then symmetrised
    theirs = AffinityPropagation(affinity="precomputed", convergence_iter=50, random_state=0).fit_predict((x + x.T) / 2)
    assert labels == theirs.tolist()


def test_a_task_without_self_affinity_keeps_the_groups():
    unmeasured = BLOCKS.copy()
    unmeasured[2, 2] = 0.0
    assert affinity_propagation_groups(unmeasured) is None
    strategy = strategy_for("abcd")
    strategy.affinity.copy_(torch.from_numpy(unmeasured))
    strategy.regroup()
    assert strategy.groups() == [[0], [1], [2], [3]]


def reference_losses(model, batch, tasks) -> dict[int, float]:
    with torch.no_grad():
        outputs = model(batch["image"])
    return {i: float(t.compute_loss(outputs[t.name], batch)) for i, t in enumerate(tasks)}


@pytest.mark.parametrize("credit", ["authors_code", "own_step"])
def test_warm_up_iterations_step_each_task_alone_in_a_shuffled_order_and_fill_the_affinity_map(credit):
    """Each task its own group: T plain SGD steps per iteration, each along one task's gradient at
    the weights the previous step left, in torch.randperm's order; after each forward but the
    first, the credited task's row of A moves by beta towards the relative loss decreases."""
    tasks = refuge_tasks()
    names = [t.name for t in tasks]
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batch = random_batch(3)
    lr, beta = 0.05, 0.3
    strategy = strategy_for(names, affinity_decay=beta, warmup_iterations=10, credit=credit)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=lr)])
    params = list(reference.parameters())
    affinity = torch.zeros(4, 4, dtype=torch.float64)
    for iteration in range(2):
        torch.manual_seed(100 + iteration)
        logged = strategy.training_step(ctx, batch)
        torch.manual_seed(100 + iteration)
        order = torch.randperm(4).tolist()
        previous = None
        for position, k in enumerate(order):
            losses = reference_losses(reference, batch, tasks)
            if previous is not None:
                s = k if credit == "authors_code" else order[position - 1]
                for t in range(4):
                    r = 1 - losses[t] / previous[t]
                    if t != s or r >= 0:
                        affinity[s, t] = (1 - beta) * affinity[s, t] + beta * r
            previous = losses
            sgd_step_along(params, per_task_gradients(reference, batch, tasks, params)[k], lr)
        assert logged["groups"] == 4
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(strategy.affinity, affinity)
    assert (affinity != 0).sum() >= 8  # the comparison covered real updates


def test_one_group_of_every_task_is_stepped_twice_along_the_summed_gradient():
    """Their rule for a single group: the group is updated twice per mini-batch."""
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batch = random_batch(5)
    lr = 0.05
    strategy = strategy_for([t.name for t in tasks], warmup_iterations=0)
    strategy.group_of.zero_()
    strategy.iterations.fill_(-1)  # this iteration keeps the groups set above (no regrouping)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=lr)])
    strategy.training_step(ctx, batch)
    params = list(reference.parameters())
    for _ in range(2):
        sgd_step_along(params, per_task_gradients(reference, batch, tasks, params).sum(dim=0), lr)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_after_the_warm_up_the_groups_come_from_the_affinity_map():
    tasks = refuge_tasks()
    strategy = strategy_for([t.name for t in tasks], warmup_iterations=0)
    strategy.affinity.copy_(torch.from_numpy(BLOCKS))
    strategy.iterations.fill_(1)
    model = tiny_unet()
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.01)])
    logged = strategy.training_step(ctx, random_batch(1))
    assert logged["groups"] == 2
    assert sorted(strategy.groups()) == [[0, 1], [2, 3]]


def test_options_outside_their_ranges_are_refused():
    with pytest.raises(ConfigError, match="affinity_decay must be in"):
        SelectiveGroupUpdates(affinity_decay=0.0)
    with pytest.raises(ConfigError, match="credit must be one of"):
        SelectiveGroupUpdates(credit="next")
