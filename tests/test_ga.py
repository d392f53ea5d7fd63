"""GA (Schafer et al. 2024, Algorithm 1): the accumulated gradient is the sum of per-task gradients, each on
its own task's batch; samplers; the Lightning path with per-task loaders."""

import copy
import itertools

import torch

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.strategies import GradientAccumulation
from medmtl.tasks import refuge_tasks

TASKS = ["glaucoma", "od", "oc", "fovea"]


def test_accumulated_gradient_is_the_sum_of_per_task_gradients_on_their_own_batches():
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batches = {name: random_batch(10 + i) for i, name in enumerate(TASKS)}
    strategy = GradientAccumulation()
    strategy.setup(TASKS)
    ctx = PlainContext(
        model,
        tasks,
        [torch.optim.SGD(model.parameters(), lr=0.0)],
        task_batches={k: itertools.repeat(v) for k, v in batches.items()},
    )
    strategy.training_step(ctx, batch=None)

    expected = [torch.zeros_like(p) for p in reference.parameters()]
    for task in tasks:
        batch = batches[task.name]
        loss = task.compute_loss(reference(batch["image"], tasks=[task.name])[task.name], batch)
        for acc, g in zip(expected, torch.autograd.grad(loss, list(reference.parameters()), allow_unused=True)):
            if g is not None:
                acc += g
    for (name, p), e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p), e, msg=name)


def test_balanced_sampler_draws_the_configured_number_of_tasks():
    strategy = GradientAccumulation(sampler="balanced", steps=7)
    strategy.setup(TASKS)
    torch.manual_seed(0)
    picks = strategy.chosen_tasks()
    assert len(picks) == 7 and set(picks) <= set(TASKS)
    cyclic = GradientAccumulation()
    cyclic.setup(TASKS)
    assert cyclic.chosen_tasks() == TASKS


def test_each_task_draws_from_its_own_loader():
    tasks = refuge_tasks()
    model = tiny_unet()
    counters = {k: 0 for k in TASKS}

    def stream(name):
        while True:
            counters[name] += 1
            yield random_batch(counters[name])

    strategy = GradientAccumulation()
    strategy.setup(TASKS)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.01)], task_batches={k: stream(k) for k in TASKS})
    for _ in range(3):
        strategy.training_step(ctx, batch=None)
    assert counters == {k: 3 for k in TASKS}
