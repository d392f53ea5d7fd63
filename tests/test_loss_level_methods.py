"""The loss-level balancing methods (GLS, SI, IMTL-L, IMTL, STCH, FAMO, DB-MTL), each against its
paper's formula computed by hand on plain tensors or on a tiny network with one backward per task."""

import copy
import math

import pytest
import torch

from helpers import PlainContext, per_task_gradients, random_batch, sgd_step_along, tiny_unet
from medmtl.strategies import (
    DualBalancing,
    FastAdaptiveMultitask,
    GeometricLossStrategy,
    ImpartialLossScaling,
    ImpartialMTL,
    ScaleInvariantLosses,
    SmoothTchebycheff,
)
from medmtl.tasks import refuge_tasks

NAMES = ["a", "b", "c"]


def quadratic_losses(x, scale=1.0):
    """Three positive losses of a parameter vector; the second multiplied by ``scale``."""
    return {"a": (x[0] - 1) ** 2 + 0.5, "b": scale * ((x[1] + x[0]) ** 2 + 0.1), "c": (x[2] * x[1] - 2) ** 2 + 1.0}


def gradient(strategy, x, scale=1.0):
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(strategy.weighted_total(quadratic_losses(x, scale)), x)
    return g


X = torch.tensor([0.3, -0.7, 1.2], dtype=torch.float64)


def test_gls_is_the_geometric_mean_and_its_direction_ignores_a_loss_scale():
    strategy = GeometricLossStrategy(eps=0.0)
    losses = quadratic_losses(X)
    expected = math.prod(v.item() for v in losses.values()) ** (1 / 3)
    assert strategy.weighted_total(losses).item() == pytest.approx(expected)
    g1, g10 = gradient(strategy, X), gradient(strategy, X, scale=10.0)
    # (prod_k L_k)^(1/T) with L_b -> 10 L_b is multiplied by 10^(1/3): same direction
    torch.testing.assert_close(g10, 10 ** (1 / 3) * g1)


def test_si_is_the_sum_of_log_losses_and_its_gradient_ignores_a_loss_scale():
    strategy = ScaleInvariantLosses(eps=0.0)
    losses = quadratic_losses(X)
    assert strategy.weighted_total(losses).item() == pytest.approx(sum(math.log(v.item()) for v in losses.values()))
    torch.testing.assert_close(gradient(strategy, X, scale=10.0), gradient(strategy, X))


def test_imtl_l_scales_get_the_gradient_exp_s_l_minus_one():
    """Liu et al. 2021, IMTL-L: L = sum_k e^{s_k} L_k - s_k, so dL/ds_k = e^{s_k} L_k - 1."""
    strategy = ImpartialLossScaling()
    strategy.setup(NAMES)
    with torch.no_grad():
        strategy.scales.log_scale.copy_(torch.tensor([0.2, -0.4, 0.0]))
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(0.5), "c": torch.tensor(3.0)}
    strategy.weighted_total(losses).backward()
    s = torch.tensor([0.2, -0.4, 0.0])
    torch.testing.assert_close(strategy.scales.log_scale.grad, torch.exp(s) * torch.tensor([2.0, 0.5, 3.0]) - 1)


def test_imtl_update_has_equal_projections_on_the_scaled_unit_gradients():
    """IMTL-G's defining property (Liu et al. 2021: equal projections on every unit gradient) on
    the gradients of the IMTL-L scaled losses e^{s_k} L_k; the weights sum to 1; each head gets its
    scaled loss's gradient."""
    tasks = refuge_tasks()
    names = [t.name for t in tasks]
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batch = random_batch(3)
    strategy = ImpartialMTL()
    strategy.setup(names)
    strategy.double()
    s = torch.tensor([0.5, -0.3, 0.1, -1.0], dtype=torch.float64)
    with torch.no_grad():
        strategy.scales.log_scale.copy_(s)
    strategy.training_step(PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.0)]), batch)

    scaled = torch.exp(s).unsqueeze(1) * per_task_gradients(reference, batch, tasks, reference.shared_parameters())
    update = torch.cat([p.grad.flatten() for p in model.shared_parameters()])
    projections = scaled @ update / scaled.norm(dim=1)
    torch.testing.assert_close(projections, projections.mean().expand(4), rtol=1e-5, atol=1e-10)
    weights = torch.linalg.lstsq(scaled.T, update.unsqueeze(1)).solution.squeeze(1)
    assert weights.sum().item() == pytest.approx(1.0, rel=1e-6)
    for k, task in enumerate(tasks):
        own = per_task_gradients(reference, batch, [task], reference.head_parameters(task.name))[0]
        torch.testing.assert_close(torch.cat([p.grad.flatten() for p in model.head_parameters(task.name)]), torch.exp(s[k]) * own)
    losses = torch.stack([t.compute_loss(reference(batch["image"])[t.name], batch) for t in tasks]).detach()
    torch.testing.assert_close(strategy.scales.log_scale.grad, torch.exp(s) * losses - 1)


def test_stch_warms_up_on_log_losses_then_smooths_the_max_of_nadir_normalised_logs():
    """Lin et al. 2024, smooth Tchebycheff with f_k - z_k = log(L_k / z_k): for mu = 1/2 and two tasks,
    T mu log sum_k exp(2 log(L_k / z_k)) = log((L_a / z_a)^2 + (L_b / z_b)^2)."""
    strategy = SmoothTchebycheff(mu=0.5, warmup_epochs=2, eps=0.0)
    strategy.setup(["a", "b"])

    def losses(a, b):
        return {"a": torch.tensor(a, dtype=torch.float64), "b": torch.tensor(b, dtype=torch.float64)}

    first = strategy.weighted_total(losses(9.0, 9.0))  # first warm-up epoch: not in the nadir
    assert first.item() == pytest.approx(2 * math.log(9.0))
    strategy.on_train_epoch_end(0)
    strategy.weighted_total(losses(2.0, 0.5))
    strategy.weighted_total(losses(4.0, 1.5))
    strategy.weighted_total({"a": torch.tensor(3.0, dtype=torch.float64)})  # b absent
    strategy.on_train_epoch_end(1)
    z_a, z_b = 3.0, 1.0  # means over the last warm-up epoch
    total = strategy.weighted_total(losses(1.5, 2.0))
    assert total.item() == pytest.approx(math.log((1.5 / z_a) ** 2 + (2.0 / z_b) ** 2))
    # small mu: the hard Tchebycheff max, T max_k log(L_k / z_k)
    sharp = SmoothTchebycheff(mu=1e-3, warmup_epochs=1, eps=0.0)
    sharp.setup(["a", "b"])
    sharp.weighted_total(losses(3.0, 1.0))
    sharp.on_train_epoch_end(0)
    assert sharp.weighted_total(losses(1.5, 2.0)).item() == pytest.approx(2 * math.log(2.0), abs=1e-2)


@pytest.mark.parametrize("max_norm", [0.0, 1e-3])
def test_famo_follows_algorithm_1_by_hand(max_norm):
    """Liu et al. 2023, Algorithm 1 with plain logit steps, two iterations on a tiny U-Net: the
    network moves along c sum_k z_k / L_k grad L_k, and the logits along -beta (z * (delta - z.delta)
    + gamma xi), delta the log-loss decrease measured on the same batch after the step. With
    max_norm > 0 the shared parameters' part of the direction is first scaled to that norm when
    longer (the authors' code clips it at 1.0), the heads' part is not."""
    tasks = refuge_tasks()
    names = [t.name for t in tasks]
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batch = random_batch(5)
    lr, beta, gamma = 0.05, 0.5, 0.1
    strategy = FastAdaptiveMultitask(beta=beta, gamma=gamma, logit_optimizer="sgd", eps=0.0, max_norm=max_norm)
    strategy.setup(names)
    strategy.double()
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=lr)])

    def task_losses(net):
        with torch.no_grad():
            outputs = net(batch["image"])
            return torch.stack([t.compute_loss(outputs[t.name], batch) for t in tasks])

    xi = torch.zeros(4, dtype=torch.float64)
    params = list(reference.parameters())
    shared = torch.cat([torch.full((p.numel(),), any(p is q for q in reference.shared_parameters())) for p in params])
    for _ in range(2):
        strategy.training_step(ctx, batch)
        z = torch.softmax(xi, dim=0)
        before = task_losses(reference)
        weights = (z / before) / (z / before).sum()
        direction = weights @ per_task_gradients(reference, batch, tasks, params)
        shared_norm = direction[shared].norm()
        if max_norm > 0:
            assert shared_norm > max_norm, "the test needs a direction that is clipped"
            direction[shared] *= max_norm / shared_norm
        sgd_step_along(params, direction, lr)
        delta = torch.log(before) - torch.log(task_losses(reference))
        xi = xi - beta * (z * (delta - (z * delta).sum()) + gamma * xi)
    torch.testing.assert_close(strategy.logits, xi)
    assert not torch.allclose(xi, torch.zeros(4, dtype=torch.float64)), "the logits never moved: the test checks nothing"
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(("beta", "sigma"), [(0.8, 0.5), (0.9, 0.0)])
def test_db_mtl_rescales_averaged_log_loss_gradients_to_the_largest_norm(beta, sigma):
    """Lin et al. 2023: gbar_k <- beta_t gbar_k + (1 - beta_t) grad log L_k, beta_t = beta / t^sigma,
    shared update sum_k (max_j |gbar_j| / |gbar_k|) gbar_k; heads get grad log L_k. (0.9, 0) are
    the authors' LibMTL defaults, DB_beta and DB_beta_sigma."""
    from hydra.utils import instantiate

    from helpers import compose_train

    configured = instantiate(compose_train(["optim=db_mtl"]).optim.strategy)
    assert (configured.beta, configured.sigma) == (0.9, 0.0), "the configured defaults are LibMTL's"
    tasks = refuge_tasks()
    names = [t.name for t in tasks]
    model = tiny_unet()
    reference = copy.deepcopy(model)
    strategy = DualBalancing(beta=beta, sigma=sigma, eps=0.0)
    strategy.setup(names)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.0)])
    shared = reference.shared_parameters()
    average = torch.zeros(4, sum(p.numel() for p in shared), dtype=torch.float64)
    for step, seed in enumerate((1, 2), start=1):
        batch = random_batch(seed)
        strategy.training_step(ctx, batch)
        with torch.no_grad():
            outputs = reference(batch["image"])
            losses = torch.stack([t.compute_loss(outputs[t.name], batch) for t in tasks])
        log_gradients = per_task_gradients(reference, batch, tasks, shared) / losses.unsqueeze(1)
        rate = beta / step**sigma
        average = rate * average + (1 - rate) * log_gradients
    norms = average.norm(dim=1)
    expected = (norms.max() / norms) @ average
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in model.shared_parameters()]), expected)
    for k, task in enumerate(tasks):
        own = per_task_gradients(reference, batch, [task], reference.head_parameters(task.name))[0] / losses[k]
        torch.testing.assert_close(torch.cat([p.grad.flatten() for p in model.head_parameters(task.name)]), own)


def test_cosmos_and_pbi_are_their_formulas_on_the_present_tasks():
    """COSMOS: sum_k r_k L_k - lambda (r . L) / (||r|| ||L||); PBI: d_1 + theta d_2 with w = r / ||r||,
    d_1 = L . w, d_2 = ||L - d_1 w||; r uniform (1/T over the task set), restricted to the present
    tasks -- each written here from the papers' equations, values and gradients."""
    from medmtl.strategies import PreferenceScalarization

    x = X.clone().requires_grad_()
    losses = quadratic_losses(x)
    present = {k: losses[k] for k in ("a", "c")}  # task b absent from the batch
    L = torch.stack(list(present.values()))
    r = torch.full((2,), 1.0 / 3, dtype=torch.float64)
    cosmos = (r * L).sum() - 0.7 * (r @ L) / (r.norm() * L.norm())
    w = r / r.norm()
    d1 = L @ w
    pbi = d1 + 4.0 * (L - d1 * w).norm()
    for strategy, expected in (
        (PreferenceScalarization("cosmos", lambda_=0.7), cosmos),
        (PreferenceScalarization("pbi", theta=4.0), pbi),
    ):
        strategy.setup(NAMES)
        total = strategy.weighted_total(present)
        assert total.item() == pytest.approx(expected.item(), rel=1e-12)
        (ours,) = torch.autograd.grad(total, x, retain_graph=True)
        (theirs,) = torch.autograd.grad(expected, x, retain_graph=True)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_a_dirichlet_preference_is_redrawn_and_bad_options_are_one_sentence():
    from medmtl.errors import ConfigError
    from medmtl.strategies import PreferenceScalarization

    class Ctx:
        def agree(self, tensor):
            return tensor

    strategy = PreferenceScalarization("pbi", preference="dirichlet")
    strategy.setup(NAMES)
    draws = []
    for _ in range(3):
        strategy.observe(Ctx(), None, None, quadratic_losses(X))
        strategy.weighted_total(quadratic_losses(X))
        draws.append(torch.stack(list(strategy.weights_to_log().values())))
    assert all(d.sum().item() == pytest.approx(1.0, rel=1e-6) and (d > 0).all() for d in draws)
    assert not torch.equal(draws[0], draws[1])
    for options, message in (
        ({"scalarizer": "tchebycheff"}, "scalarizer must be one of"),
        ({"scalarizer": "cosmos", "lambda_": -1.0}, "must be >= 0"),
        ({"scalarizer": "pbi", "concentration": 0.0}, "concentration must be > 0"),
        ({"scalarizer": "pbi", "preference": "equal"}, "preference must be one of"),
    ):
        with pytest.raises(ConfigError, match=message):
            PreferenceScalarization(**options)
