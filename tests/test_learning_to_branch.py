"""Learning to Branch: what each level reads under the three branchings (LibMTL's warm-up sum, a
hard choice, the evaluation argmax), checked with forward hooks against hand-written sums; the
temperature schedule from LibMTL's formula. (Run beside LibMTL's LTB in a scratch folder with the
same weights, the outputs are equal in the warm-up and for a fixed choice; LibMTL is not on PyPI
with LTB, so that comparison is not a test.)"""

import pytest
import torch

from medmtl.data.nyudv2 import nyudv2_tasks
from medmtl.models.learning_to_branch import LearningToBranch

TASKS = ["semseg", "depth", "normals"]


def model(**options) -> LearningToBranch:
    torch.manual_seed(0)
    tasks = nyudv2_tasks("nyud_mt", TASKS)
    net = LearningToBranch(tasks, backbone="test_resnet", aspp_width=8, input_normalization="none", **options)
    return net.double()


def level_io(net: LearningToBranch, x: torch.Tensor) -> tuple[list, list]:
    """(inputs, outputs) of every task's block at every level, recorded by hooks in one forward."""
    inputs = [[None] * len(TASKS) for _ in range(net.LEVELS)]
    outputs = [[None] * len(TASKS) for _ in range(net.LEVELS)]
    hooks = []
    for level, blocks in enumerate(net.levels):
        for t, block in enumerate(blocks):

            def record(module, args, result, level=level, t=t):
                inputs[level][t], outputs[level][t] = args[0].detach(), result.detach()

            hooks.append(block.register_forward_hook(record))
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return inputs, outputs


def image():
    return torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_the_warm_up_level_reads_the_sum_of_every_tasks_previous_output():
    net = model(epochs=200).train()  # warm-up: epoch < 200 / 100
    net.set_training_progress(1 / 200)
    inputs, outputs = level_io(net, image())
    for level in range(1, net.LEVELS):
        for t in range(len(TASKS)):
            torch.testing.assert_close(inputs[level][t], sum(outputs[level - 1]))


def test_in_evaluation_each_level_reads_the_argmax_branch():
    net = model().eval()
    choice = torch.tensor([[2, 0, 1], [1, 1, 0], [0, 2, 2], [2, 1, 0], [0, 0, 1]])
    with torch.no_grad():
        net.branch.alpha.copy_(torch.nn.functional.one_hot(choice, 3).double() * 3 - 1)
    inputs, outputs = level_io(net, image())
    for level in range(1, net.LEVELS):
        for t in range(len(TASKS)):
            torch.testing.assert_close(inputs[level][t], outputs[level - 1][int(choice[level, t])])


def test_training_draws_one_hot_branches_and_the_temperature_follows_libmtl():
    net = model(epochs=100).train()
    net.set_training_progress(0.03)  # epoch 3
    assert net.epoch == 3
    assert net.temperature() == pytest.approx(100 / 20 / 2)  # (epochs / 20) / sqrt(epoch + 1)
    draws = net.branching()
    assert set(draws.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(draws.sum(dim=-1), torch.ones(5, 3, dtype=torch.float64))
    inputs, outputs = level_io(net, image())
    for level in range(1, net.LEVELS):
        for t in range(len(TASKS)):
            assert any(torch.equal(inputs[level][t], o) for o in outputs[level - 1])


def test_the_branching_logits_learn_through_the_gumbel_sample():
    net = model(epochs=100).train()
    net.set_training_progress(0.5)
    out = net(image())
    sum(v.pow(2).mean() for v in out.values()).backward()
    assert net.branch.alpha.grad is not None and net.branch.alpha.grad.abs().sum() > 0
