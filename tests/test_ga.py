"""GA (Schafer et al. 2024, Algorithm 1): the accumulated gradient is the sum of per-task gradients, each on
its own task's batch; samplers; the Lightning path with per-task loaders."""

import copy
import itertools

import pytest
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


@pytest.mark.parametrize("workers", [0, 2])
def test_task_streams_make_one_loader_and_replay_each_pass_in_its_epochs_order(workers):
    """Worker processes of a persistent loader start once per stream, not at every pass: the stream
    re-iterates one loader; pass p still reads the sampler's epoch-p order."""
    from torch.utils.data import DataLoader

    from medmtl.data.sampling import EpochSeededSampler
    from medmtl.data.task_streams import TaskBatchStreams

    class Keys(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, key):
            return torch.tensor(key[0])

    class TwoTasks:
        separate_task_inputs = True
        made = 0

        def task_dataloader(self, task):
            TwoTasks.made += 1
            sampler = EpochSeededSampler(6, seed=5)
            return DataLoader(Keys(), batch_size=3, sampler=sampler, num_workers=workers, persistent_workers=workers > 0)

    streams = TaskBatchStreams(["a", "b"])
    datamodule = TwoTasks()
    drawn = [streams.next_batch(datamodule, "a").tolist() for _ in range(6)]  # three passes of two batches
    streams.close()  # drops the stream, and with it the loader's worker processes
    assert TwoTasks.made == 1
    for epoch in range(3):
        sampler = EpochSeededSampler(6, seed=5)
        sampler.set_epoch(epoch)
        order = [index for index, _ in sampler]
        assert drawn[2 * epoch] + drawn[2 * epoch + 1] == order
    after = EpochSeededSampler(6, seed=5)
    after.set_epoch(3)  # a closed stream goes on where it stood: pass 3, first batch
    assert streams.next_batch(datamodule, "a").tolist() == [index for index, _ in after][:3]
    assert streams.state_dict() == {"a": [3, 1]}
    streams.close()
