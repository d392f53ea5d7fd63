"""One and two MAO steps against the formulas of Hervella et al. 2024 (Eqs. 7-12), computed by hand."""

import copy
import math

import pytest
import torch

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.strategies import MultiAdaptive, MultiAdaptiveOptimization
from medmtl.tasks import refuge_tasks

LR, B1, B2, EPS, WD = 1e-2, 0.9, 0.999, 1e-8, 0.1


def hand_mao(model, batches, tasks, bias_correction, eps_placement, step_counter="global"):
    """Algorithm 1 by hand; a task whose ``present/`` mask is all False is absent from the batch."""
    named = dict(model.named_parameters())
    paths = {"glaucoma": ("encoder.", "classifiers.glaucoma.")}
    moments = {}
    for batch in batches:
        grads = {}
        for task in tasks:
            prefixes = paths.get(task.name, ("encoder.", "decoder.", f"dense_heads.{task.name}."))
            chosen = [n for n in named if n.startswith(prefixes)]
            mask = batch.get(f"present/{task.name}")
            if mask is not None and not mask.any():
                if step_counter == "global":  # Algorithm 1: every task, every step; its gradient is zero
                    grads[task.name] = {n: torch.zeros_like(named[n]) for n in chosen}
                continue
            loss = task.compute_loss(model(batch["image"])[task.name], batch)
            grads[task.name] = dict(zip(chosen, torch.autograd.grad(loss, [named[n] for n in chosen])))
        with torch.no_grad():
            for n, p in named.items():
                update = torch.zeros_like(p)
                reached = False
                for task in tasks:
                    if n not in grads.get(task.name, {}):
                        continue
                    reached = True
                    g = grads[task.name][n]
                    step, m, v = moments.get((task.name, n), (0, 0.0, 0.0))
                    step, m, v = step + 1, B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g * g
                    moments[(task.name, n)] = (step, m, v)
                    if bias_correction == "standard":
                        c = math.sqrt(1 - B2**step) / (1 - B1**step)
                    else:
                        c = (1 - B2**step) / (1 - B1**step)
                    denominator = (v + EPS).sqrt() if eps_placement == "inside" else v.sqrt() + EPS
                    update += c * m / denominator
                if reached or step_counter == "global":
                    p.mul_(1 - LR * WD)
                p.sub_(LR * update)


@pytest.mark.parametrize("bias_correction,eps_placement", [("standard", "inside"), ("printed", "inside"), ("standard", "adam")])
def test_two_mao_steps_match_the_formulas(bias_correction, eps_placement):
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    strategy = MultiAdaptiveOptimization()
    optimizer = MultiAdaptive(
        model.parameters(),
        lr=LR,
        betas=(B1, B2),
        eps=EPS,
        weight_decay=WD,
        bias_correction=bias_correction,
        eps_placement=eps_placement,
    )
    batches = [random_batch(1), random_batch(2)]
    for batch in batches:
        strategy.training_step(PlainContext(model, tasks, [optimizer]), batch)
    hand_mao(reference, batches, tasks, bias_correction, eps_placement)
    # atol 1e-10: conv biases before batch norm have round-off gradients (~1e-17), whose
    # Adam-normalised updates differ at 1e-11 between summation orders; real updates are ~1e-2
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10, msg=name)
    assert not torch.allclose(model.encoder.levels[0][0].weight, tiny_unet().encoder.levels[0][0].weight)


@pytest.mark.parametrize("step_counter", ["global", "per_task"])
def test_a_task_absent_from_a_batch_follows_the_chosen_counter(step_counter):
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    optimizer = MultiAdaptive(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, step_counter=step_counter)
    unlabelled = random_batch(2) | {"present/glaucoma": torch.tensor([False, False])}
    batches = [random_batch(1), unlabelled, random_batch(3)]
    for batch in batches:
        MultiAdaptiveOptimization().training_step(PlainContext(model, tasks, [optimizer]), batch)
    hand_mao(reference, batches, tasks, "standard", "inside", step_counter)
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10, msg=name)
    steps = {"global": 3, "per_task": 2}[step_counter]
    assert optimizer.state[model.encoder.levels[0][0].weight]["glaucoma"]["step"] == steps


def test_moments_are_per_task_and_heads_only_see_their_task():
    tasks = refuge_tasks()
    model = tiny_unet()
    optimizer = MultiAdaptive(model.parameters(), lr=1e-3)
    MultiAdaptiveOptimization().training_step(PlainContext(model, tasks, [optimizer]), random_batch(3))
    shared = optimizer.state[model.encoder.levels[0][0].weight]
    assert set(shared) == {"glaucoma", "od", "oc", "fovea"}
    assert not torch.allclose(shared["od"]["m"], shared["glaucoma"]["m"])
    assert set(optimizer.state[model.dense_heads["oc"].weight]) == {"oc"}
    assert set(optimizer.state[model.decoder.blocks[0].convs[0].weight]) == {"od", "oc", "fovea"}


def test_optimizer_state_survives_a_round_trip():
    tasks = refuge_tasks()
    model = tiny_unet()
    optimizer = MultiAdaptive(model.parameters(), lr=1e-3)
    MultiAdaptiveOptimization().training_step(PlainContext(model, tasks, [optimizer]), random_batch(4))
    restored = MultiAdaptive(model.parameters(), lr=1e-3)
    restored.load_state_dict(optimizer.state_dict())
    p = model.encoder.levels[0][0].weight
    torch.testing.assert_close(restored.state[p]["fovea"]["v"], optimizer.state[p]["fovea"]["v"])
    assert restored.state[p]["fovea"]["step"] == 1
