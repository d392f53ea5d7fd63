"""NTKMTL-SR (Qin et al. 2025) against a step written by hand from the authors' SR path: the batch
cut in chunks, per-chunk task losses from sliced outputs and labels, one gradient per chunk and task
with respect to the shared representation, the largest eigenvalue of each task's chunk kernel,
loss weights (sum lambda / lambda_i)^p, one backward of the weighted mean of the chunk losses."""

import copy

import pytest
import torch

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.strategies import NTKMTLSR
from medmtl.tasks import compute_losses, refuge_tasks

BATCH = 4


def sliced(tensors, rows):
    return {k: v[rows] if v.shape[:1] == (BATCH,) else v for k, v in tensors.items()}


def flat_gradient(loss, z):
    grads = torch.autograd.grad(loss, z, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(t)).flatten() for g, t in zip(grads, z)])


def authors_step(model, batch, tasks, chunks, ntk_exp, lr):
    """One SGD step the authors' way, on ``model``; returns the weights."""
    shared = model.representation(batch["image"])
    z = list(shared.values())
    outputs = model.heads(shared)
    pieces = torch.arange(BATCH).chunk(chunks)  # their torch.chunk of the per-sample losses
    chunk_losses = [compute_losses(tasks, sliced(outputs, rows), sliced(batch, rows)) for rows in pieces]
    eigenvalues = []
    for task in tasks:
        rows = [flat_gradient(c[task.name], z) for c in chunk_losses]
        jacobian = torch.stack(rows)
        eigenvalues.append(torch.linalg.eigvalsh(jacobian @ jacobian.T)[-1])
    eigenvalues = torch.stack(eigenvalues)
    weights = (eigenvalues.sum() / eigenvalues) ** ntk_exp
    mean_losses = torch.stack([torch.stack([c[t.name] for c in chunk_losses]).mean() for t in tasks])
    model.zero_grad(set_to_none=True)
    (mean_losses @ weights.detach()).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return weights.detach()


@pytest.mark.parametrize(("chunks", "ntk_exp"), [(1, 0.5), (2, 0.5), (4, 0.75)])
def test_two_steps_equal_the_authors_sr_update_by_hand(chunks, ntk_exp):
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batch = random_batch(3, n=BATCH)
    lr = 0.05
    strategy = NTKMTLSR(ntk_exp=ntk_exp, chunks=chunks)
    strategy.setup([t.name for t in tasks])
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=lr)])
    for _ in range(2):
        logged = strategy.training_step(ctx, batch)
        weights = authors_step(reference, batch, tasks, chunks, ntk_exp, lr)
        logged_weights = torch.stack([logged[f"weight/{t.name}"] for t in tasks]).double()
        torch.testing.assert_close(logged_weights, weights, rtol=1e-5, atol=0)
    moved = [not torch.equal(p, q) for p, q in zip(model.parameters(), tiny_unet().parameters())]
    assert any(moved)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_one_chunk_kernel_is_the_squared_norm_of_the_representation_gradient():
    """n = 1: K_i is the 1 x 1 matrix |dL_i/dZ|^2, so lambda_i needs no eigen-solver (a property of
    the definition, computed here from one autograd call per task)."""
    tasks = refuge_tasks()
    model = tiny_unet()
    batch = random_batch(5, n=BATCH)
    strategy = NTKMTLSR(chunks=1)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.0)])
    shared = model.representation(batch["image"])
    z = list(shared.values())
    outputs = model.heads(shared)
    names = [t.name for t in tasks]
    eigenvalues = strategy.kernel_eigenvalues(ctx, outputs, batch, names, z)
    losses = compute_losses(tasks, outputs, batch)
    norms = torch.stack([(flat_gradient(losses[n], z) ** 2).sum() for n in names])
    torch.testing.assert_close(eigenvalues, norms.double(), rtol=1e-10, atol=0)


def test_a_task_labelled_in_one_chunk_only_keeps_its_weight_and_one_absent_gets_none():
    """Partial labels: glaucoma labelled on the first sample only (one chunk of two has a row), the
    optic cup on none (weight 0, no NaN)."""
    tasks = refuge_tasks()
    model = tiny_unet()
    batch = random_batch(6, n=BATCH) | {
        "present/glaucoma": torch.tensor([True, False, False, False]),
        "present/oc": torch.zeros(BATCH, dtype=torch.bool),
    }
    strategy = NTKMTLSR(chunks=2)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.01)])
    logged = strategy.training_step(ctx, batch)
    assert "weight/oc" not in logged and "loss/oc" not in logged
    weights = torch.stack([logged[f"weight/{n}"] for n in ("od", "glaucoma", "fovea")])
    assert torch.isfinite(weights).all() and (weights > 0).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_weights_follow_the_kernel_ratio_and_a_zero_kernel_gets_zero():
    weights = NTKMTLSR(ntk_exp=0.5).weights(torch.tensor([1.0, 4.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([5.0**0.5, (5.0 / 4.0) ** 0.5, 0.0], dtype=torch.float64))


def test_two_ranks_with_two_chunks_take_the_single_process_step_on_the_union_batch(tmp_path):
    """The distributed test runs the default (one chunk); with two chunks of each rank's batch of
    two, chunk j of the union (interleaved, as that test orders it) is the ranks' chunks j, and the
    union's kernel the ranks' summed as the docstring derives: equal to the single process."""
    from distributed_steps import LABELLINGS
    from test_distributed import on_two_ranks

    name = "ntkmtl_sr optim.strategy.chunks=2"
    reference, ranks = on_two_ranks(tmp_path, [name])
    for labels in LABELLINGS:
        single, first, second = reference[(labels, name)], ranks[0][(labels, name)], ranks[1][(labels, name)]
        for key in single:
            torch.testing.assert_close(first[key], single[key], rtol=1e-7, atol=1e-9, msg=key)
            torch.testing.assert_close(second[key], first[key], rtol=0, atol=0, msg=key)
