"""MTL-IO against an independent re-implementation (Pascal et al. 2022, Eq. 3; docs/methods.md)."""

import copy

import pytest
import torch

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.strategies import IndependentOptimizers, SharedOptimizerAlternating
from medmtl.tasks import refuge_tasks

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
ORDER = ["glaucoma", "od", "oc", "fovea"]


def adam_factory(params):
    return torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS)


def path_names(task: str) -> tuple[str, ...]:
    """Parameter-name prefixes of each task's path, written from the architecture, not from the code."""
    return ("encoder.", "classifiers.glaucoma.") if task == "glaucoma" else ("encoder.", "decoder.", f"dense_heads.{task}.")


def reference_io(model, batches, tasks):
    """Alternating updates with one hand-written Adam per task (own m, v and step count)."""
    named = dict(model.named_parameters())
    state = {t: {"step": 0, "m": {}, "v": {}} for t in ORDER}
    for batch in batches:
        for name in ORDER:
            task = next(t for t in tasks if t.name == name)
            chosen = [n for n in named if n.startswith(path_names(name))]
            loss = task.compute_loss(model(batch["image"], tasks=[name])[name], batch)
            grads = torch.autograd.grad(loss, [named[n] for n in chosen])
            s = state[name]
            s["step"] += 1
            with torch.no_grad():
                for n, g in zip(chosen, grads):
                    m = s["m"].get(n, torch.zeros_like(g)) * BETAS[0] + (1 - BETAS[0]) * g
                    v = s["v"].get(n, torch.zeros_like(g)) * BETAS[1] + (1 - BETAS[1]) * g * g
                    s["m"][n], s["v"][n] = m, v
                    m_hat = m / (1 - BETAS[0] ** s["step"])
                    v_hat = v / (1 - BETAS[1] ** s["step"])
                    named[n] -= LR * m_hat / (v_hat.sqrt() + EPS)
    return state


def test_two_iterations_match_the_reference():
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    strategy = IndependentOptimizers()
    ctx = PlainContext(model, tasks, strategy.configure_optimizers(model, adam_factory))
    batches = [random_batch(1), random_batch(2)]
    for batch in batches:
        strategy.training_step(ctx, batch)
    reference_io(reference, batches, tasks)
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10, msg=f"parameter {name} differs")
    # and the run really moved the weights (not a vacuous equality)
    assert not torch.allclose(model.encoder.levels[0][0].weight, tiny_unet().encoder.levels[0][0].weight)


def test_each_task_has_its_own_adam_moments_on_shared_parameters():
    tasks = refuge_tasks()
    model = tiny_unet()
    strategy = IndependentOptimizers()
    optimizers = strategy.configure_optimizers(model, adam_factory)
    strategy.training_step(PlainContext(model, tasks, optimizers), random_batch(3))
    shared = model.encoder.levels[0][0].weight
    moments = [opt.state[shared]["exp_avg"] for opt in optimizers]
    for i in range(len(moments)):
        for j in range(i + 1, len(moments)):
            assert not torch.allclose(moments[i], moments[j])
    assert all(int(opt.state[shared]["step"]) == 1 for opt in optimizers)
    # optimizer k owns exactly task k's path: the classifier's optimizer has no decoder parameter
    decoder = {id(p) for p in model.decoder.parameters()}
    classifier_params = {id(p) for g in optimizers[0].param_groups for p in g["params"]}
    assert not classifier_params & decoder


def test_classification_step_leaves_the_decoder_and_dense_heads_untouched():
    tasks = refuge_tasks()
    model = tiny_unet()
    untouched = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("decoder.", "dense_heads."))}
    strategy = IndependentOptimizers()
    optimizers = strategy.configure_optimizers(model, adam_factory)
    batch = random_batch(4)
    batch |= {f"present/{t}": torch.zeros(2, dtype=torch.bool) for t in ("od", "oc", "fovea")}
    logged = strategy.training_step(PlainContext(model, tasks, optimizers), batch)
    assert set(logged) == {"loss/glaucoma"}
    for name, p in model.named_parameters():
        if name in untouched:
            assert torch.equal(p, untouched[name]), name
            assert p.grad is None, f"{name} got a gradient from the classification step"
    assert not torch.equal(model.classifiers["glaucoma"][1].weight, tiny_unet().classifiers["glaucoma"][1].weight)


def test_shared_optimizer_variant_mixes_moments_in_one_adam():
    tasks = refuge_tasks()
    model = tiny_unet()
    strategy = SharedOptimizerAlternating()
    (optimizer,) = strategy.configure_optimizers(model, adam_factory)
    strategy.training_step(PlainContext(model, tasks, [optimizer]), random_batch(5))
    # four alternating steps of one Adam: the encoder's step count is 4
    assert int(optimizer.state[model.encoder.levels[0][0].weight]["step"]) == 4


def test_wrong_task_order_is_refused():
    strategy = IndependentOptimizers(order=["od", "glaucoma"])
    model = tiny_unet()
    ctx = PlainContext(model, refuge_tasks(), strategy.configure_optimizers(model, adam_factory))
    with pytest.raises(ValueError, match="permutation"):
        strategy.training_step(ctx, random_batch(6))
