"""Gradient-combination strategies: closed forms, torchjd agreement, properties, and the update
that reaches the network (docs/methods.md)."""

import copy
import itertools

import pytest
import torch
import torchjd.aggregation as jd

from helpers import PlainContext, per_task_gradients, random_batch, tiny_unet
from medmtl.strategies import MGDA, JacobianAggregator, PCGrad
from medmtl.strategies.gradient_combination import task_jacobian
from medmtl.strategies.mgda import min_norm_weights
from medmtl.strategies.pcgrad import pcgrad_weights
from medmtl.tasks import refuge_tasks

TASKS = ["glaucoma", "od", "oc", "fovea"]


def random_jacobian(t, n=12, seed=0):
    return torch.randn(t, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_pcgrad(jacobian, orders):
    """PCGrad on explicit vectors (Yu et al. 2020, Algorithm 1), with the given visiting orders."""
    projected = []
    for i, g in enumerate(jacobian):
        g = g.clone()
        for j in orders[i]:
            if j != i and g @ jacobian[j] < 0:
                g = g - (g @ jacobian[j]) / (jacobian[j] @ jacobian[j]) * jacobian[j]
        projected.append(g)
    return torch.stack(projected).sum(0)


def test_pcgrad_two_task_closed_form():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    jacobian = torch.stack([g1, g2])
    update = pcgrad_weights(jacobian @ jacobian.T) @ jacobian
    # g1.g2 = -1: g1' = g1 + g2/2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1)
    assert update.tolist() == pytest.approx([0.5, 1.5])


@pytest.mark.parametrize("t", [3, 5])
def test_pcgrad_on_the_gramian_equals_pcgrad_on_vectors(t):
    jacobian = random_jacobian(t, seed=t)
    generator = torch.Generator().manual_seed(7)
    orders = [torch.randperm(t, generator=generator).tolist() for _ in range(t)]
    weights = pcgrad_weights(jacobian @ jacobian.T, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(weights @ jacobian, reference_pcgrad(jacobian, orders))


def test_pcgrad_agrees_with_torchjd_for_two_tasks():
    for seed in range(5):
        jacobian = random_jacobian(2, seed=seed)
        gramian = jacobian @ jacobian.T
        torch.testing.assert_close(pcgrad_weights(gramian), jd.PCGradWeighting()(gramian).to(torch.float64))


def test_pcgrad_mean_reduction():
    jacobian = random_jacobian(3)
    gramian = jacobian @ jacobian.T
    torch.manual_seed(0)
    total = pcgrad_weights(gramian)
    torch.manual_seed(0)
    assert torch.allclose(pcgrad_weights(gramian, reduction="mean"), total / 3)


def test_mgda_two_task_closed_form():
    for seed in range(5):
        jacobian = random_jacobian(2, seed=seed)
        g = jacobian @ jacobian.T
        alpha = torch.clamp((g[1, 1] - g[0, 1]) / (g[0, 0] + g[1, 1] - 2 * g[0, 1]), 0, 1)
        torch.testing.assert_close(min_norm_weights(g), torch.stack([alpha, 1 - alpha]))


def brute_force_min_norm(gramian: torch.Tensor) -> float:
    """Every support S: the affine minimiser on S if it lies inside the simplex; the smallest value wins."""
    t = gramian.shape[0]
    best = float("inf")
    for size in range(1, t + 1):
        for support in itertools.combinations(range(t), size):
            s = list(support)
            system = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            system[:size, :size] = gramian[s][:, s]
            system[:size, size] = system[size, :size] = 1.0
            rhs = torch.zeros(size + 1, dtype=torch.float64)
            rhs[size] = 1.0
            w = torch.linalg.lstsq(system, rhs.unsqueeze(1), driver="gelsd").solution[:size, 0]
            if (w >= -1e-12).all():
                best = min(best, float(w @ gramian[s][:, s] @ w))
    return best


@pytest.mark.parametrize("t", [3, 4, 6, 8])
def test_mgda_exact_solver_reaches_the_minimum_of_every_support(t):
    for seed in range(4):
        jacobian = random_jacobian(t, n=4 + t, seed=seed)
        g = jacobian @ jacobian.T
        ours = min_norm_weights(g)
        assert ours.sum().item() == pytest.approx(1.0) and (ours >= 0).all()
        assert (ours @ g @ ours).item() == pytest.approx(brute_force_min_norm(g), rel=1e-9, abs=1e-12)
        # optimality conditions of the QP: (G w)_k >= w^T G w, with equality on the support
        gw, value = g @ ours, ours @ g @ ours
        assert (gw >= value - 1e-9 * g.diagonal().max()).all()
        torch.testing.assert_close(gw[ours > 1e-9], value.expand((ours > 1e-9).sum()), rtol=1e-8, atol=1e-10)


def test_mgda_exact_solver_handles_repeated_and_more_tasks_than_dimensions():
    base = random_jacobian(3, n=5, seed=1)
    repeated = torch.cat([base, base[:1]])  # task 0 twice: a singular affine system
    many = random_jacobian(12, n=3, seed=2)  # 12 gradients in 3 dimensions
    for jacobian in (repeated, many):
        g = jacobian @ jacobian.T
        ours = min_norm_weights(g)
        assert (ours >= 0).all() and ours.sum().item() == pytest.approx(1.0)
        assert (ours @ g @ ours).item() == pytest.approx(brute_force_min_norm(g), rel=1e-8, abs=1e-12)


def test_mgda_frank_wolfe_option_agrees_with_torchjd_and_stays_above_the_exact_minimum():
    for seed in range(3):
        jacobian = random_jacobian(5, n=9, seed=seed)
        g = jacobian @ jacobian.T
        exact = min_norm_weights(g)
        fw = min_norm_weights(g, max_iterations=5000, tolerance=1e-12, solver="frank_wolfe")
        theirs = jd.MGDAWeighting(epsilon=1e-9, max_iters=5000)(g).to(torch.float64)
        assert (fw @ g @ fw).item() == pytest.approx((theirs @ g @ theirs).item(), rel=1e-3, abs=1e-8)
        assert (fw @ g @ fw).item() >= (exact @ g @ exact).item() - 1e-12


AGGREGATORS = {
    "pcgrad": lambda: PCGrad(),
    "mgda": lambda: MGDA(),
    "mgda_l2": lambda: MGDA(normalization="l2"),
    "mgda_l2_rescaled": lambda: MGDA(normalization="l2", rescale=True),
    **{
        f"jd_{name}": (lambda name=name: JacobianAggregator(name))
        for name in ("upgrad", "imtl_g", "aligned_mtl", "cagrad", "dualproj", "nash_mtl")
    },
}
# with rescale=false MGDA's weights (from normalised gradients) meet the raw gradients: no claim
NON_CONFLICTING = {"mgda", "mgda_l2_rescaled", "jd_upgrad", "jd_dualproj"}
PERMUTATION_INVARIANT = {"mgda", "mgda_l2", "jd_upgrad", "jd_imtl_g", "jd_dualproj", "jd_cagrad"}


def weights_of(name, jacobian):
    strategy = AGGREGATORS[name]()
    strategy.setup([f"t{i}" for i in range(jacobian.shape[0])])
    losses = torch.ones(jacobian.shape[0], dtype=torch.float64)
    return strategy.combination_weights(jacobian @ jacobian.T, losses, jacobian).to(torch.float64)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregator_output_is_finite(name):
    for seed in range(3):
        jacobian = random_jacobian(4, seed=seed)
        assert torch.isfinite(weights_of(name, jacobian)).all()


@pytest.mark.parametrize("name", sorted(NON_CONFLICTING))
def test_non_conflicting_update(name):
    for seed in range(5):
        jacobian = random_jacobian(4, n=6, seed=seed)
        update = weights_of(name, jacobian) @ jacobian
        # cosine tolerance 1e-3: torchjd's dual-cone solver regularises (reg_eps = 1e-4)
        cosines = (jacobian @ update) / (jacobian.norm(dim=1) * update.norm())
        assert (cosines >= -1e-3).all(), f"the update conflicts with a task gradient: {cosines}"


@pytest.mark.parametrize("name", sorted(PERMUTATION_INVARIANT))
def test_permutation_invariance(name):
    jacobian = random_jacobian(4, seed=11)
    permutation = torch.tensor([2, 0, 3, 1])
    update = weights_of(name, jacobian) @ jacobian
    permuted = weights_of(name, jacobian[permutation]) @ jacobian[permutation]
    torch.testing.assert_close(update, permuted, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("mode", ["jacobian", "gramian"])
def test_update_is_the_weighted_jacobian_and_heads_get_their_own_gradient(mode):
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batch = random_batch(2)
    strategy = MGDA(mode=mode, normalization="l2")
    strategy.setup(TASKS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    strategy.training_step(PlainContext(model, tasks, [optimizer]), batch)

    shared = reference.shared_parameters()
    jacobian = per_task_gradients(reference, batch, tasks, shared)
    gramian = jacobian @ jacobian.T
    losses = torch.stack([t.compute_loss(reference(batch["image"])[t.name], batch) for t in tasks]).detach()
    expected = strategy.combination_weights(gramian, losses) @ jacobian
    got = torch.cat([p.grad.flatten() for p in model.shared_parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    for task in tasks:
        ours = torch.cat([p.grad.flatten() for p in model.head_parameters(task.name)])
        own = per_task_gradients(reference, batch, [task], reference.head_parameters(task.name))[0]
        torch.testing.assert_close(ours, own)


def stacked_losses(seed):
    """A tiny U-Net's four task losses on a random batch, with its shared parameters."""
    tasks = refuge_tasks()
    model = tiny_unet()
    batch = random_batch(seed)
    outputs = model(batch["image"])
    losses = torch.stack([t.compute_loss(outputs[t.name], batch) for t in tasks])
    return model, batch, tasks, losses, model.shared_parameters()


def test_batched_jacobian_equals_per_task_backward():
    model, batch, tasks, losses, params = stacked_losses(3)
    torch.testing.assert_close(task_jacobian(losses, params, "batched"), per_task_gradients(model, batch, tasks, params))


def test_absent_tasks_are_left_out_of_the_jacobian():
    tasks = refuge_tasks()
    model = tiny_unet()
    batch = random_batch(4) | {"present/oc": torch.tensor([False, False]), "present/glaucoma": torch.tensor([False, False])}
    strategy = PCGrad()
    logged = strategy.training_step(PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.1)]), batch)
    assert {k for k in logged if k.startswith("weight/")} == {"weight/od", "weight/fovea"}
    assert model.dense_heads["oc"].weight.grad is None and model.classifiers["glaucoma"][1].weight.grad is None
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gramian_mode_is_refused_for_an_aggregator_of_the_jacobian():
    with pytest.raises(ValueError, match="mode=jacobian"):
        JacobianAggregator("nash_mtl", mode="gramian")


def test_representation_mode_weights_come_from_gradients_at_z_and_reach_w_by_the_chain_rule():
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batch = random_batch(6)
    strategy = MGDA(mode="representation")
    logged = strategy.training_step(PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.0)]), batch)

    # reference: one backward per task to the representation Z (what the batched call replaces)
    shared = reference.representation(batch["image"])
    rows = []
    for task in tasks:
        loss = task.compute_loss(reference.heads(shared)[task.name], batch)
        grads = torch.autograd.grad(loss, list(shared.values()), retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(z)).flatten() for g, z in zip(grads, shared.values())]))
    jz = torch.stack(rows)
    gram = jz @ jz.T
    best = min_norm_weights(gram)
    weights = torch.tensor([logged[f"weight/{t.name}"].item() for t in tasks], dtype=torch.float64)
    # the strategy's weights are a min-norm point of the Gramian at Z (weights need not be unique)
    assert (weights @ gram @ weights).item() == pytest.approx((best @ gram @ best).item(), rel=1e-3)
    # shared parameters: gradient of sum_k a_k L_k; heads: their own task's gradient
    outputs = reference(batch["image"])
    losses = [t.compute_loss(outputs[t.name], batch) for t in tasks]
    reference.zero_grad()
    sum(w * loss for w, loss in zip(weights, losses)).backward()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        if name.startswith(("encoder.", "decoder.")):
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-9, msg=name)
    for task in tasks:
        own = per_task_gradients(reference, batch, [task], reference.head_parameters(task.name))[0]
        torch.testing.assert_close(torch.cat([p.grad.flatten() for p in model.head_parameters(task.name)]), own)


def test_loop_and_batched_jacobians_agree():
    _, _, _, losses, params = stacked_losses(7)
    torch.testing.assert_close(task_jacobian(losses, params, "loop"), task_jacobian(losses, params, "batched"))


def test_nash_mtl_solver_state_survives_a_checkpoint():
    """Nash-MTL re-solves every ``update_weights_every`` steps and reuses its previous weights in
    between: a strategy restored from the state dict (as a resumed run is) continues with the
    weights the uninterrupted one computes; a fresh solver does not (so the check has teeth)."""
    generator = torch.Generator().manual_seed(0)
    jacobians = [torch.randn(3, 40, generator=generator, dtype=torch.float64) for _ in range(6)]

    def weights(strategy, jacobian):
        return strategy.combination_weights(jacobian @ jacobian.T, None, jacobian)

    def nash():
        return JacobianAggregator("nash_mtl", options={"update_weights_every": 2})

    running = nash()
    running.setup(["a", "b", "c"])
    for jacobian in jacobians[:3]:
        weights(running, jacobian)
    restored, fresh = nash(), nash()
    for strategy in (restored, fresh):
        strategy.setup(["a", "b", "c"])
    restored.load_state_dict(running.state_dict())
    after = [(weights(running, j), weights(restored, j), weights(fresh, j)) for j in jacobians[3:]]
    for expected, resumed, _ in after:
        torch.testing.assert_close(resumed, expected)
    assert not torch.allclose(after[0][2], after[0][0]), "a fresh solver gave the same weights: the test checks nothing"


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_weights_solve_the_alpha_fairness_equation(alpha):
    """Ban & Ji 2024, Eq. 4: the weights w > 0 satisfy G w = w^(-1/alpha) element-wise."""
    for seed in range(3):
        jacobian = random_jacobian(4, n=9, seed=seed)
        gramian = jacobian @ jacobian.T
        strategy = JacobianAggregator("fairgrad", options={"alpha": alpha})
        w = strategy.combination_weights(gramian, torch.ones(4, dtype=torch.float64)).to(torch.float64)
        assert (w > 0).all()
        torch.testing.assert_close(gramian @ w, w ** (-1 / alpha), rtol=1e-4, atol=1e-6)


def shared_updates(strategy, jacobians, names=("a", "b", "c")):
    """The update our strategy writes for each Jacobian in turn, one seed per step."""
    updates = []
    for step, jacobian in enumerate(jacobians):
        torch.manual_seed(step)
        update, _ = strategy.shared_update(jacobian, torch.ones(jacobian.shape[0], dtype=jacobian.dtype), list(names))
        updates.append(update)
    return updates


TORCHJD_AGGREGATORS = {
    "config": lambda: jd.ConFIG(),
    "graddrop": lambda: jd.GradDrop(),
    "random": lambda: jd.Random(),
    "gradvac": lambda: jd.GradVac(beta=0.5),
    "pcd": lambda: jd.PCD(tau=0.02, beta=0.999),
    "excess_mtl": lambda: jd.ExcessMTL(robust_step_size=1.0),
    "krum": lambda: jd.Krum(n_byzantine=0),
    "trimmed_mean": lambda: jd.TrimmedMean(trim_number=1),
}
STATEFUL = {"gradvac": {"beta": 0.5}, "pcd": {}, "excess_mtl": {"n_warmup_steps": 2}, "modo": {}, "sdmgrad": {}}


@pytest.mark.parametrize("name", sorted(TORCHJD_AGGREGATORS))
def test_wrapped_aggregator_gives_torchjds_update_step_after_step(name):
    """Same Jacobians, same seeds: our update equals torchjd's aggregator applied to J, over several
    steps (the stateful ones carry their statistics from one step to the next)."""
    generator = torch.Generator().manual_seed(1)
    jacobians = [torch.randn(3, 20, generator=generator, dtype=torch.float64) for _ in range(4)]
    strategy = JacobianAggregator(name)
    strategy.setup(["a", "b", "c"])
    reference = TORCHJD_AGGREGATORS[name]()
    theirs = []
    for step, jacobian in enumerate(jacobians):
        torch.manual_seed(step)
        theirs.append(reference(jacobian))
    for ours, expected in zip(shared_updates(strategy, jacobians), theirs):
        torch.testing.assert_close(ours, expected.to(torch.float64), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(STATEFUL) + ["cr_mogm"])
def test_stateful_aggregator_state_survives_a_checkpoint(name):
    """A strategy restored from the state dict after three steps continues with the updates of the
    uninterrupted one; a fresh one does not (so the check has teeth)."""
    generator = torch.Generator().manual_seed(2)
    jacobians = [torch.randn(3, 20, generator=generator, dtype=torch.float64) for _ in range(6)]
    if name == "cr_mogm":
        jacobians = [j * (1 + 3 * k) for k, j in enumerate(jacobians)]  # weights that change with the step

    def make():
        if name == "cr_mogm":
            strategy = JacobianAggregator("imtl_g", cr_mogm_alpha=0.8)
        else:
            strategy = JacobianAggregator(name, options=STATEFUL[name])
        strategy.setup(["a", "b", "c"])
        return strategy

    running = make()
    shared_updates(running, jacobians[:3])
    restored, fresh = make(), make()
    restored.load_state_dict(copy.deepcopy(running.state_dict()))
    expected = shared_updates(running, jacobians[3:])
    for ours, theirs in zip(shared_updates(restored, jacobians[3:]), expected):
        torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(shared_updates(fresh, jacobians[3:])[0], expected[0]), "a fresh state gave the same update"


def test_cr_mogm_averages_the_wrapped_weights_by_hand():
    """Zhou et al. 2022: lambda_t = alpha lambda_{t-1} + (1 - alpha) lambda-hat_t, lambda_1 = lambda-hat_1."""
    generator = torch.Generator().manual_seed(3)
    jacobians = [torch.randn(3, 8, generator=generator, dtype=torch.float64) * (k + 1) for k in range(3)]
    smoothed = JacobianAggregator("imtl_g", cr_mogm_alpha=0.7)
    smoothed.setup(["a", "b", "c"])
    previous = None
    for jacobian in jacobians:
        gramian = jacobian @ jacobian.T
        raw = jd.IMTLGWeighting()(gramian)
        expected = raw if previous is None else 0.7 * previous + 0.3 * raw
        torch.testing.assert_close(smoothed.combination_weights(gramian, None, jacobian, names=["a", "b", "c"]), expected)
        previous = expected


def test_pcd_puts_the_primary_task_first():
    """PCD reads row 0 of the Gramian as the primary objective: with primary_task = "b" our weights
    are torchjd's on the Gramian permuted to (b, a, c), permuted back."""
    jacobian = random_jacobian(3, n=10, seed=4)
    gramian = jacobian @ jacobian.T
    strategy = JacobianAggregator("pcd", primary_task="b")
    strategy.setup(["a", "b", "c"])
    ours = strategy.combination_weights(gramian, None, jacobian, names=["a", "b", "c"])
    order = [1, 0, 2]
    theirs = jd.PCDWeighting()(gramian[order][:, order])
    torch.testing.assert_close(ours[order], theirs)
    assert not torch.allclose(ours, jd.PCDWeighting()(gramian)), "the permutation changed nothing: the test checks nothing"


@pytest.mark.parametrize(
    ("name", "reference"), [("modo", lambda: jd.MoDoWeighting()), ("sdmgrad", lambda: jd.SDMGradWeighting())]
)
def test_double_sampling_weights_come_from_the_two_half_batches(name, reference):
    """MoDo and SDMGrad: weights from torchjd's weighting of A = J_1 J_2^T (the Jacobians of the two
    halves of the batch, by one backward per task), applied to the whole batch's gradients; two
    iterations, so the weighting's state (its previous weights) carries over as in torchjd."""
    tasks = refuge_tasks()
    model = tiny_unet()
    reference_model = copy.deepcopy(model)
    strategy = JacobianAggregator(name)
    strategy.setup(TASKS)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.0)])
    weighting = reference()
    shared = reference_model.shared_parameters()
    for seed in (1, 2):
        batch = random_batch(seed, n=4)
        strategy.training_step(ctx, batch)
        halves = [{k: v[part] for k, v in batch.items()} for part in (slice(0, 2), slice(2, 4))]
        j1, j2 = (per_task_gradients(reference_model, half, tasks, shared) for half in halves)
        weights = weighting(j1 @ j2.T)
        expected = weights @ per_task_gradients(reference_model, batch, tasks, shared)
        # a float64 network keeps float64 weights (float32 ones were off by ~1e-8 relative)
        ours = torch.cat([p.grad.flatten() for p in model.shared_parameters()])
        torch.testing.assert_close(ours, expected, rtol=1e-11, atol=1e-13 * expected.abs().max().item())


def test_double_sampling_refuses_a_batch_of_one_sample():
    strategy = JacobianAggregator("modo")
    strategy.setup(TASKS)
    model = tiny_unet()
    with pytest.raises(ValueError, match="2 samples or more"):
        strategy.training_step(
            PlainContext(model, refuge_tasks(), [torch.optim.SGD(model.parameters(), lr=0.0)]), random_batch(1, n=1)
        )


def official_excess_mtl_weights(jacobians, robust_step_size=1.0):
    """He et al. 2024's official loop (uiuctml/ExcessMTL, its LibMTL weighting), written here from
    that code: per task E_k = g_k^T diag(sqrt(sum of g_k^2 so far + 1e-7))^-1 g_k; the first call
    stores E as the baseline and leaves the weights at 1; each later call multiplies the weights by
    exp(step E / E_baseline) and rescales them to sum to T. Returned as fractions (sum 1)."""
    weights = torch.ones(jacobians[0].shape[0], dtype=torch.float64)
    squares, baseline, out = None, None, []
    for jacobian in jacobians:
        squares = jacobian**2 if squares is None else squares + jacobian**2
        excess = ((jacobian / torch.sqrt(squares + 1e-7)) * jacobian).sum(dim=1)
        if baseline is None:
            baseline = excess
        else:
            weights = weights * torch.exp(excess / baseline * robust_step_size)
            weights = weights / weights.sum() * len(weights)
        out.append(weights / weights.sum())
    return out


def test_configured_excess_mtl_follows_the_authors_code():
    """optim=jd_excess_mtl as configured (n_warmup_steps 1) gives the official code's updates; the
    old setting, 0, puts far more weight on one task from its first update."""
    from hydra.utils import instantiate

    from helpers import compose_train

    generator = torch.Generator().manual_seed(4)
    scales = torch.tensor([[1.0], [3.0], [0.3]], dtype=torch.float64)
    jacobians = [torch.randn(3, 50, generator=generator, dtype=torch.float64) * scales for _ in range(5)]
    strategy = instantiate(compose_train(["optim=jd_excess_mtl"]).optim.strategy)
    strategy.setup(["a", "b", "c"])
    for ours, weights, jacobian in zip(shared_updates(strategy, jacobians), official_excess_mtl_weights(jacobians), jacobians):
        torch.testing.assert_close(ours, weights @ jacobian, rtol=1e-6, atol=1e-9)
    raw = JacobianAggregator("excess_mtl", options={"n_warmup_steps": 0})
    raw.setup(["a", "b", "c"])
    first = shared_updates(raw, jacobians[:1])[0]
    assert (first - jacobians[0].mean(dim=0)).abs().max() > 1e-2, "n_warmup_steps 0 should differ from the authors' first step"


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_cagrad_with_each_rescale_gives_libmtls_update(rescale):
    """LibMTL 1.1.5's CAGrad (after the authors' code: g0 + c ||g0|| gw / ||gw||, divided by 1 + c^2
    under its default rescale=1, by 1 + c under 2), run here as the reference. Its SLSQP solve and
    float32 weights agree with our exact solve to about 1e-4; the rescale factors differ by 20% or
    more, so the test tells them apart."""
    from helpers import libmtl_update

    generator = torch.Generator().manual_seed(6)
    jacobian = torch.randn(3, 40, generator=generator, dtype=torch.float64)
    jacobian[1] -= 1.2 * jacobian[0]  # conflicting gradients: CAGrad moves away from the mean
    expected = libmtl_update("CAGrad", jacobian, calpha=0.5, rescale=rescale)
    strategy = JacobianAggregator("cagrad", options={"c": 0.5, "rescale": rescale})
    strategy.setup(["a", "b", "c"])
    (ours,) = shared_updates(strategy, [jacobian])
    torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=1e-3, atol=1e-3 * expected.abs().max().item())


def authors_aligned_mtl_update(jacobian: torch.Tensor) -> torch.Tensor:
    """Senushkin et al. 2023 as their code and LibMTL compute it: G = J J^T = V diag(l) V^T over its
    non-zero eigenvalues, B = sqrt(l_min) V diag(l)^(-1/2) V^T, weights B 1 (preference all ones),
    update sum_k (B 1)_k g_k."""
    values, vectors = torch.linalg.eigh(jacobian @ jacobian.T)
    keep = values > values.max() * len(values) * torch.finfo(values.dtype).eps
    values, vectors = values[keep], vectors[:, keep]
    balance = values.min().sqrt() * vectors @ torch.diag(values.rsqrt()) @ vectors.T
    return balance.sum(dim=1) @ jacobian


def test_aligned_mtl_update_is_the_authors_and_uniform_preference_is_one_t_of_it():
    generator = torch.Generator().manual_seed(7)
    jacobian = torch.randn(4, 30, generator=generator, dtype=torch.float64) * torch.tensor(
        [[1.0], [5.0], [0.2], [2.0]], dtype=torch.float64
    )
    expected = authors_aligned_mtl_update(jacobian)
    for pref_vector, share in (("ones", 1.0), ("uniform", 0.25)):
        strategy = JacobianAggregator("aligned_mtl", options={"pref_vector": pref_vector})
        strategy.setup(["a", "b", "c", "d"])
        (ours,) = shared_updates(strategy, [jacobian], names=("a", "b", "c", "d"))
        torch.testing.assert_close(ours, share * expected, rtol=1e-7, atol=1e-10)


def test_trimmed_mean_trims_fewer_when_fewer_tasks_are_present():
    """torchjd's TrimmedMean needs 2 t + 1 rows: with two tasks present a trim of 1 becomes 0 (their
    plain mean); with five it stays 1 (by hand: per coordinate, the middle three values averaged)."""
    generator = torch.Generator().manual_seed(5)
    strategy = JacobianAggregator("trimmed_mean", options={"trim_number": 1})
    strategy.setup(["a", "b", "c", "d", "e"])
    two = torch.randn(2, 7, generator=generator, dtype=torch.float64)
    (ours,) = shared_updates(strategy, [two], names=("a", "b"))
    torch.testing.assert_close(ours, two.mean(dim=0))
    five = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    (ours,) = shared_updates(strategy, [five], names=("a", "b", "c", "d", "e"))
    torch.testing.assert_close(ours, five.sort(dim=0).values[1:4].mean(dim=0))


def test_krum_takes_the_mean_when_too_few_tasks_are_present_to_rank():
    """Krum ranks gradients by their distances to the T - f - 2 nearest others: it needs f + 3 of
    them. With two present (f = 0) the update is their mean; with four, torchjd's Krum."""
    generator = torch.Generator().manual_seed(6)
    strategy = JacobianAggregator("krum")
    strategy.setup(["a", "b", "c", "d"])
    two = torch.randn(2, 7, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(shared_updates(strategy, [two], names=("a", "b"))[0], two.mean(dim=0))
    four = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(shared_updates(strategy, [four], names=("a", "b", "c", "d"))[0], jd.Krum(n_byzantine=0)(four))


def test_graddrop_at_the_representation_gives_libmtls_update_on_the_same_draws():
    """LibMTL 1.1.5's GradDrop (rep_grad=True), run here beside ours: the shared layers' gradient is
    Z's update pulled back, u_b = sum_k M_k g_{k,b} with the masks from the batch-reduced,
    activation-signed gradients and one uniform draw per feature (the same seed for both)."""
    import sys
    import types

    import torch.hub

    from medmtl.data.multimnist import multimnist_tasks
    from medmtl.models.multi_lenet import MultiLeNet
    from medmtl.strategies import GradientSignDropout

    shim = types.SimpleNamespace(load_state_dict_from_url=torch.hub.load_state_dict_from_url)
    sys.modules.setdefault("torchvision.models.utils", shim)  # LibMTL 1.1.5 imports a module torchvision removed
    import LibMTL.weighting as weighting

    tasks = multimnist_tasks()
    torch.manual_seed(0)
    ours_model = MultiLeNet(tasks, dropout="none").double()
    theirs_model = copy.deepcopy(ours_model)
    generator = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(6, 1, 28, 28, generator=generator, dtype=torch.float64),
        "left": torch.randint(0, 10, (6,), generator=generator),
        "right": torch.randint(0, 10, (6,), generator=generator),
    }
    strategy = GradientSignDropout()
    strategy.setup(["left", "right"])
    torch.manual_seed(7)
    strategy.training_step(PlainContext(ours_model, tasks, [torch.optim.SGD(ours_model.parameters(), lr=0.0)]), batch)

    class Adapter(weighting.GradDrop):
        def __init__(self):
            super().__init__()
            self.task_num, self.device, self.rep_grad, self.task_name = 2, torch.device("cpu"), True, ["left", "right"]

    rep = theirs_model.representation(batch["image"])["features"]
    adapter = Adapter()
    adapter.rep = rep
    adapter.rep_tasks = {t: rep.detach().clone().requires_grad_() for t in ("left", "right")}
    outputs = {t: theirs_model.heads({"features": adapter.rep_tasks[t]}, [t])[t] for t in ("left", "right")}
    losses = torch.stack([task.compute_loss(outputs[task.name], batch) for task in tasks])
    torch.manual_seed(7)
    adapter.backward(losses, leak=0.0)
    for ours, theirs in zip(ours_model.encoder.parameters(), theirs_model.encoder.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-9)  # LibMTL stores the gradients in float32
    for name in ("left", "right"):  # each head its own task's gradient
        for ours, theirs in zip(ours_model.classifiers[name].parameters(), theirs_model.classifiers[name].parameters()):
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-9, atol=1e-12)
    plain = GradientSignDropout(leak=1.0)
    plain.setup(["left", "right"])
    summed = copy.deepcopy(ours_model)
    plain.training_step(PlainContext(summed, tasks, [torch.optim.SGD(summed.parameters(), lr=0.0)]), batch)
    assert not torch.allclose(summed.encoder.fc.weight.grad, ours_model.encoder.fc.weight.grad), "no gradient was dropped"


def test_layers_shared_after_the_representation_get_the_summed_losses_gradient():
    """MTI-Net's refinements and feature propagation mix the tasks after Z (the backbone's
    features): under MGDA-UB they must train, with the gradient of the summed losses (deep
    supervision included), computed here by one plain backward on a copy; the backbone gets the
    combination at Z instead."""
    from medmtl.data.nyudv2 import nyudv2_tasks
    from medmtl.models.mtinet import MTINet
    from medmtl.strategies.context import network_losses

    tasks = nyudv2_tasks("nyud_mt", ["semseg", "depth"])
    torch.manual_seed(0)
    model = MTINet(tasks, backbone="hrnet_tiny", input_normalization="none").double()
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.rand(2, 3, 64, 64, generator=g, dtype=torch.float64),
        "semseg": torch.randint(-1, 40, (2, 64, 64), generator=g),
        "depth": torch.rand(2, 64, 64, generator=g, dtype=torch.float64) + 0.5,
    }
    after_z = [*reference.refinement.parameters(), *reference.propagation.parameters()]
    total = sum(network_losses(reference, tasks, reference(batch["image"]), batch).values())
    expected = torch.autograd.grad(total, after_z)
    strategy = MGDA(mode="representation")
    strategy.setup([t.name for t in tasks])
    before = [p.detach().clone() for p in [*model.refinement.parameters(), *model.propagation.parameters()]]
    strategy.training_step(PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=1.0)]), batch)
    moved = [b - a for a, b in zip([*model.refinement.parameters(), *model.propagation.parameters()], before)]
    for step, gradient in zip(moved, expected):
        torch.testing.assert_close(step, gradient, rtol=1e-9, atol=1e-12)
    assert any(bool(g.abs().sum() > 0) for g in expected)
