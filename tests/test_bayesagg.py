"""BayesAgg-MTL (Achituve et al. 2024) against the paper's equations computed independently: the
Laplace posterior's curvature from autograd (the Jacobian of the logits in the last layer and the
Hessian of the loss in the logits), the gradient moments from one autograd gradient per posterior
draw and sample, the precision-weighted aggregation by hand, and a whole step assembled from
these. (The step also matches the authors' ``BayesAggMTL.backward`` run on the same inputs in a
scratch folder: docs/methods.md.)"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmtl import losses
from medmtl.errors import ConfigError
from medmtl.models.multi_lenet import MultiLeNet
from medmtl.strategies import BayesAggMTL
from medmtl.strategies.bayesagg import (
    Group,
    Posterior,
    curvature,
    gradient_moments,
    laplace,
    layer_blocks,
    precision_shares,
    precision_weighted,
    regression_moments,
    task_groups,
    with_bias_input,
)
from medmtl.strategies.context import PlainContext
from medmtl.tasks import Task

N, D = 6, 50


@pytest.fixture(autouse=True)
def float64():
    """The comparisons run in float64 (restored after each test)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def tasks():
    return [
        Task("left", "multiclass", losses.cross_entropy, num_outputs=10),
        Task("right", "multiclass", losses.cross_entropy, num_outputs=10),
    ]


def mixed_tasks():
    """UTKFace's kind of task set: a regression (two outputs, squared error) and a multiclass task."""
    return [
        Task("age", "regression", losses.squared_error, num_outputs=2),
        Task("grade", "multiclass", losses.cross_entropy, num_outputs=4),
    ]


def binary_tasks():
    return [Task("a", "binary", losses.binary_cross_entropy), Task("b", "multilabel", losses.multilabel_bce, num_outputs=3)]


class LinearHeads(MultiLeNet):
    """MultiLeNet with one linear layer per task on its 50 shared features, for any image-level
    tasks (the binary ones too)."""

    def __init__(self, task_list):
        nn.Module.__init__(self)
        self.task_names = tuple(t.name for t in task_list)
        self.task_by_name = {t.name: t for t in task_list}
        self.encoder = MultiLeNet([Task("x", "multiclass", losses.cross_entropy, num_outputs=2)], dropout="none").encoder
        self.classifiers = nn.ModuleDict({t.name: nn.Linear(50, t.channels) for t in task_list})

    def heads(self, shared, tasks=None):
        out = super().heads(shared, tasks)
        return {k: v.squeeze(1) if self.task_by_name[k].channels == 1 else v for k, v in out.items()}


def batch(seed, task_list, n=N):
    g = torch.Generator().manual_seed(seed)
    data = {"image": torch.rand(n, 1, 28, 28, generator=g)}
    for t in task_list:
        if t.kind == "multiclass":
            data[t.name] = torch.randint(0, t.num_outputs, (n,), generator=g)
        elif t.kind == "regression":
            data[t.name] = torch.randn(n, t.num_outputs, generator=g) + 1.0
        else:
            data[t.name] = (torch.rand(n, *(() if t.channels == 1 else (t.channels,)), generator=g) > 0.5).double()
    return data


# ----- the posterior --------------------------------------------------------------------------
def autograd_laplace(loss_of_logits, layer, h, prior_mean, prior_precision):
    """theta = [W, b] by rows; Lambda = sum_i J_i^T (d2 l / d logits2) J_i + P0 and the Newton step
    from autograd, one sample at a time."""
    theta = torch.cat([layer.weight, layer.bias[:, None]], 1).detach().flatten()
    width = h.shape[1] + 1

    def logits_of(flat, x):
        m = flat.view(-1, width)
        return x @ m[:, :-1].T + m[:, -1]

    ggn = torch.zeros(theta.numel(), theta.numel())
    for i in range(h.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda f, i=i: logits_of(f, h[i : i + 1])[0], theta)
        hess = torch.autograd.functional.hessian(lambda z, i=i: loss_of_logits(z, i), logits_of(theta, h[i : i + 1])[0])
        ggn += jac.T @ hess @ jac
    grad = torch.autograd.functional.jacobian(
        lambda f: sum(loss_of_logits(logits_of(f, h[i : i + 1])[0], i) for i in range(h.shape[0])), theta
    )
    precision = ggn + prior_precision
    return theta - torch.linalg.solve(precision, grad + prior_precision @ (theta - prior_mean)), precision


def test_multiclass_posterior_equals_the_laplace_step_from_autograd():
    torch.manual_seed(0)
    h, layer = torch.randn(5, 4), nn.Linear(4, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    p = 15
    prior_mean, prior_precision = torch.randn(p) * 0.1, torch.eye(p) * 3.0 + 0.1 * torch.ones(p, p)
    mean, precision = autograd_laplace(lambda z, i: F.cross_entropy(z[None], y[i : i + 1]), layer, h, prior_mean, prior_precision)
    theta = layer_blocks("multiclass", layer.weight.detach(), layer.bias.detach())
    ggn, grad = curvature("multiclass", theta, with_bias_input(h), y)
    ours = laplace(theta, ggn, grad, prior_mean[None], prior_precision[None])
    torch.testing.assert_close(ours.precision[0], precision)
    torch.testing.assert_close(ours.mean[0], mean)
    torch.testing.assert_close(ours.scale_tril[0] @ ours.scale_tril[0].T, torch.linalg.inv(precision))


def test_binary_posterior_is_one_block_per_output_equal_to_autograd():
    """Independent sigmoid outputs: the Hessian in the logits is diagonal, so the precision is block
    diagonal and each output's block is its own Laplace step."""
    torch.manual_seed(1)
    h, layer = torch.randn(7, 3), nn.Linear(3, 2)
    y = (torch.rand(7, 2) > 0.5).double()
    mean, precision = autograd_laplace(
        lambda z, i: F.binary_cross_entropy_with_logits(z, y[i], reduction="sum"), layer, h, torch.zeros(8), torch.eye(8) / 0.5
    )
    theta = layer_blocks("binary", layer.weight.detach(), layer.bias.detach())
    ggn, grad = curvature("binary", theta, with_bias_input(h), y)
    eye = torch.eye(4).expand(2, 4, 4)
    ours = laplace(theta, ggn, grad, torch.zeros(2, 4), eye / 0.5)
    torch.testing.assert_close(torch.block_diag(*ours.precision), precision)
    torch.testing.assert_close(ours.mean.flatten(), mean)


def test_regression_posterior_is_exact_bayesian_linear_regression_from_any_weights():
    """Unit-noise Gaussian likelihood, no bias: mean = (P0 + H'H)^{-1} (P0 m0 + H'y) per output (NumPy's
    solve), whatever the current weights the Newton step starts from."""
    import numpy as np

    torch.manual_seed(3)
    h, y = torch.randn(7, 3), torch.randn(7, 2)
    a = torch.randn(3, 3)
    prior_precision, prior_mean = (a @ a.T + torch.eye(3)).expand(2, 3, 3), torch.randn(2, 3)
    expected = [
        np.linalg.solve(
            prior_precision[o].numpy() + h.numpy().T @ h.numpy(),
            prior_precision[o].numpy() @ prior_mean[o].numpy() + h.numpy().T @ y[:, o].numpy(),
        )
        for o in range(2)
    ]
    for theta in (torch.zeros(2, 3), torch.randn(2, 3) * 5):
        ours = laplace(theta, *curvature("regression", theta, h, y), prior_mean, prior_precision)
        torch.testing.assert_close(ours.mean, torch.tensor(np.stack(expected)))
        torch.testing.assert_close(ours.precision, prior_precision + h.T @ h)


def test_regression_moments_equal_a_monte_carlo_estimate():
    """g = 2 (w.h - y) w for w ~ N(mu, Sigma): the closed form against 400,000 draws."""
    torch.manual_seed(4)
    h, y = torch.randn(3, 3), torch.randn(3, 2)
    a = torch.randn(2, 3, 3)
    precision = a @ a.transpose(1, 2) + 2 * torch.eye(3)
    mu = torch.randn(2, 3)
    posterior = Posterior(mu, precision, torch.linalg.cholesky(torch.linalg.inv(precision)))
    mean, variance = regression_moments(posterior, h, y, power=1.0)
    w = posterior.sample(400_000)  # (S, O, D)
    g = 2 * (torch.einsum("sod,nd->sno", w, h) - y)[..., None] * w[:, None]  # (S, N, O, D)
    torch.testing.assert_close(mean, g.mean(0), atol=0.02, rtol=0.01)
    torch.testing.assert_close(variance, g.var(0), atol=0.05, rtol=0.02)


def test_draws_are_torchs_multivariate_normal_draws_for_the_same_generator_state():
    torch.manual_seed(6)
    a = torch.randn(3, 4, 4)
    covariance = a @ a.transpose(1, 2) + torch.eye(4)
    posterior = Posterior(torch.randn(3, 4), torch.linalg.inv(covariance), torch.linalg.cholesky(covariance))
    torch.manual_seed(7)
    ours = posterior.sample(50)
    torch.manual_seed(7)
    torchs = torch.distributions.MultivariateNormal(posterior.mean, scale_tril=posterior.scale_tril).rsample((50,))
    torch.testing.assert_close(ours, torchs)


# ----- the moments and the aggregation ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["multiclass", "binary"])
def test_gradient_moments_equal_per_draw_autograd_gradients(kind):
    torch.manual_seed(2)
    n, d, outputs, draws_n, power = 4, 3, 3, 9, 0.3
    h = torch.randn(n, d)
    y = torch.randint(0, outputs, (n,)) if kind == "multiclass" else (torch.rand(n, outputs) > 0.5).double()
    draws = torch.randn(draws_n, 1 if kind == "multiclass" else outputs, outputs * (d + 1) if kind == "multiclass" else d + 1)
    per_draw = []  # (S, N, rows, D)
    for s in range(draws_n):
        m = draws[s].view(outputs, d + 1)
        rows = []
        for i in range(n):
            x = h[i].clone().requires_grad_()
            z = m[:, :-1] @ x + m[:, -1]
            if kind == "multiclass":
                rows.append(torch.autograd.grad(F.cross_entropy(z[None], y[i : i + 1]), x)[0][None])
            else:  # each output its own task
                rows.append(
                    torch.stack(
                        [
                            torch.autograd.grad(F.binary_cross_entropy_with_logits(z[o], y[i, o]), x, retain_graph=True)[0]
                            for o in range(outputs)
                        ]
                    )
                )
        per_draw.append(torch.stack(rows))
    g = torch.stack(per_draw)
    mean, variance = gradient_moments(kind, draws, h, y, power)
    torch.testing.assert_close(mean, g.mean(0))
    torch.testing.assert_close(variance, g.var(0, unbiased=False).clamp_min(1e-8) ** power)


def test_precision_weighted_mean_by_hand():
    mean = torch.tensor([[[1.0, 2.0], [3.0, -2.0]], [[5.0, 0.0], [1.0, 1.0]]])  # (N=2, R=2, D=2)
    variance = torch.tensor([[[1.0, 4.0], [3.0, 4.0]], [[2.0, 2.0], [1.0, 1.0]]])
    labelled = torch.tensor([[True, True], [False, True]])
    out = precision_weighted(mean, variance, labelled, batch_size=4)
    first = [(1 / 1 + 3 / 3) / (1 / 1 + 1 / 3), (2 / 4 - 2 / 4) / (1 / 4 + 1 / 4)]
    torch.testing.assert_close(out, torch.tensor([first, [1.0, 1.0]]) / 4)
    none = precision_weighted(mean, variance, torch.zeros(2, 2, dtype=torch.bool), batch_size=4)
    assert torch.equal(none, torch.zeros(2, 2))


def test_binary_tasks_share_one_group_and_its_posterior_is_each_tasks_own():
    """Every binary output of the binary and multi-label tasks in one group (their code's binary
    group: one batched factorisation, one draw); its posterior equals each task's computed alone,
    each with its own labelled samples."""
    task_list = [
        Task("a", "binary", losses.binary_cross_entropy),
        Task("g", "multiclass", losses.cross_entropy, num_outputs=3),
        Task("b", "multilabel", losses.multilabel_bce, num_outputs=2),
    ]
    groups = task_groups(task_list)
    assert [(g.name, g.kind, [t.name for t in g.tasks]) for g in groups] == [
        (":binary", "binary", ["a", "b"]),
        ("g", "multiclass", ["g"]),
    ]
    model, strategy, optimizer, ctx = new_run(task_list)
    b = batch(5, task_list) | {"present/a": torch.tensor([True, False, True, True, False, True])}
    h = model.representation(b["image"])["features"].detach()
    layers = strategy._readout(ctx)
    y, present = strategy._group_labels(groups[0], lambda t: strategy._labels(t, b, N, h.device))
    together = strategy._posterior(ctx, groups[0], layers, h, y, present, None)
    alone_a = strategy._posterior(
        ctx,
        Group("a", "binary", (task_list[0],)),
        layers,
        h[present[:, 0]],
        y[present[:, 0], :1],
        present[present[:, 0], :1],
        None,
    )
    alone_b = strategy._posterior(ctx, Group("b", "binary", (task_list[2],)), layers, h, y[:, 1:], present[:, 1:], None)
    torch.testing.assert_close(together.mean, torch.cat([alone_a.mean, alone_b.mean]))
    torch.testing.assert_close(together.precision, torch.cat([alone_a.precision, alone_b.precision]))


def test_precision_shares_by_hand_and_logged_as_task_weights():
    """Task shares of the aggregation: sample 0, rows (a, b1, b2) with precisions (1, 1, 2) in one
    dimension and (1, 3, 0) in the other: a's share 1/4 in both, b's 3/4; sample 1, labelled for
    nothing, is left out. Logged as ``weight/<task>`` after the warm-up, summing to 1."""
    variance = torch.tensor([[[1.0, 1.0], [1.0, 1 / 3], [0.5, 1.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    labelled = torch.tensor([[True, True, True], [False, False, False]])
    labelled[0, 2] = True
    variance[0, 2, 1] = float("inf")  # precision 0 in the second dimension
    sums, count = precision_shares(variance, labelled, row_task=torch.tensor([0, 1, 1]), tasks=2)
    first = (1 / 4 + 1 / 4) / 2
    torch.testing.assert_close(sums, torch.tensor([first, 1 - first]))
    assert int(count) == 1
    task_list = tasks()
    model, strategy, optimizer, ctx = new_run(task_list)
    assert "weight/left" not in strategy.training_step(ctx, batch(1, task_list))  # the warm-up: the plain sum
    strategy.on_train_epoch_end(0)
    logged = strategy.training_step(ctx, batch(2, task_list))
    assert set(logged) == {"loss/left", "loss/right", "weight/left", "weight/right"}
    assert 0 < float(logged["weight/left"]) < 1
    assert float(logged["weight/left"] + logged["weight/right"]) == pytest.approx(1.0, abs=1e-6)


# ----- whole steps -----------------------------------------------------------------------------
def new_run(task_list, **options):
    torch.manual_seed(0)
    model = LinearHeads(task_list)
    strategy = BayesAggMTL(**{"head_clip": 0.0, "mc_samples": 64, **options})
    strategy.setup([t.name for t in task_list])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    return model, strategy, optimizer, PlainContext(model, task_list, [optimizer])


def hand_shared_gradient(model, task_list, kept_h, kept_batch, b, gamma, power, draws_n, seed):
    """dL/dh of batch ``b`` from the pieces above written again: full-data Laplace from N(0, gamma I)
    over the kept features, the batch's Laplace from it, seeded draws, moments, aggregation. The
    binary outputs of all tasks form one unit (one draw), as in the authors' binary group; the task
    sets here put no other task before a binary one."""
    h = model.representation(b["image"])["features"].detach()
    kind_of = lambda t: t.kind if t.kind in ("multiclass", "regression") else "binary"
    binary = [t for t in task_list if kind_of(t) == "binary"]
    units = ([("binary", binary)] if binary else []) + [(kind_of(t), [t]) for t in task_list if kind_of(t) != "binary"]
    means, variances = [], []
    torch.manual_seed(seed)
    for kind, members in units:
        layers = [model.readout_layer(t.name) for t in members]
        theta = torch.cat([layer_blocks(kind, layer.weight.detach(), layer.bias.detach()) for layer in layers])

        def target(d, members=members, kind=kind):
            if kind == "multiclass":
                return d[members[0].name]
            return torch.cat([d[t.name].reshape(d[t.name].shape[0], -1) for t in members], 1)

        inputs = (lambda x: x) if kind == "regression" else with_bias_input
        eye = torch.eye(theta.shape[1]).expand(theta.shape[0], -1, -1)
        full = laplace(theta, *curvature(kind, theta, inputs(kept_h), target(kept_batch)), torch.zeros_like(theta), eye / gamma)
        post = laplace(theta, *curvature(kind, theta, inputs(h), target(b)), full.mean, full.precision)
        if kind == "regression":  # exact moments, no draws
            mean, variance = regression_moments(post, h, target(b), power)
        else:
            draws = torch.distributions.MultivariateNormal(post.mean, scale_tril=post.scale_tril).rsample((draws_n,))
            mean, variance = gradient_moments(kind, draws, h, target(b), power)
        means.append(mean)
        variances.append(variance)
    mean, variance = torch.cat(means, 1), torch.cat(variances, 1)
    return ((mean / variance).sum(1) / (1 / variance).sum(1)) / h.shape[0]


@pytest.mark.parametrize("task_list", [tasks(), binary_tasks(), mixed_tasks()], ids=["multiclass", "binary", "regression"])
def test_a_step_after_the_warm_up_back_propagates_the_aggregated_gradient_from_h(task_list):
    model, strategy, optimizer, ctx = new_run(task_list, prior_variance=0.05, variance_power=0.3, regression_variance_power=0.3)
    first, second = batch(1, task_list), batch(2, task_list)
    kept_h = model.representation(first["image"])["features"].detach()
    strategy.training_step(ctx, first)
    strategy.on_train_epoch_end(0)
    reference = copy.deepcopy(model)
    expected = hand_shared_gradient(reference, task_list, kept_h, first, second, 0.05, 0.3, 64, seed=7)
    h = reference.representation(second["image"])["features"]
    shared = torch.autograd.grad(h, list(reference.encoder.parameters()), grad_outputs=expected)
    outputs = reference.heads({"features": h.detach()})
    heads = torch.autograd.grad(
        sum(t.compute_loss(outputs[t.name], second) for t in task_list),
        [p for t in task_list for p in reference.classifiers[t.name].parameters()],
    )
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    torch.manual_seed(7)
    strategy.training_step(ctx, second)
    for ours, theirs in zip(model.encoder.parameters(), shared):
        torch.testing.assert_close(ours.grad, theirs)
    for ours, theirs in zip([p for t in task_list for p in model.classifiers[t.name].parameters()], heads):
        torch.testing.assert_close(ours.grad, theirs)


def test_the_warm_up_is_the_plain_sum_and_keeps_every_epochs_features():
    task_list = tasks()
    model, strategy, optimizer, ctx = new_run(task_list, warmup_epochs=2)
    reference = copy.deepcopy(model)
    b = batch(3, task_list)
    outputs = reference(b["image"])
    sum(t.compute_loss(outputs[t.name], b) for t in task_list).backward()
    strategy.training_step(ctx, b)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours.detach(), theirs.detach() - 0.05 * theirs.grad)
    strategy.training_step(ctx, batch(4, task_list))
    strategy.on_train_epoch_end(0)
    assert strategy._previous["h"].shape == (2 * N, D) and strategy.epoch == 1


def test_partial_labels_a_task_counts_only_where_labelled():
    """A sample labelled for one task gets that task's mean gradient alone; one labelled for none
    gets nothing; the task's posterior ignores the unlabelled samples (equal to its posterior over
    the labelled ones only)."""
    task_list = tasks()
    model, strategy, optimizer, ctx = new_run(task_list)
    strategy.training_step(ctx, batch(1, task_list))
    strategy.on_train_epoch_end(0)
    b = batch(2, task_list) | {
        "present/left": torch.tensor([True, True, False, False, True, True]),
        "present/right": torch.tensor([True, False, True, False, True, True]),
    }
    h = model.representation(b["image"])["features"].detach()
    layers = strategy._readout(ctx)
    strategy._refresh_full_data_posteriors(ctx, layers)
    torch.manual_seed(3)
    gradient = strategy.shared_gradient(ctx, h, b, layers)
    assert torch.equal(gradient[3], torch.zeros(D))
    torch.manual_seed(3)
    group = task_groups(task_list)[0]
    present = b["present/left"][:, None]
    left = strategy._posterior(ctx, group, layers, h, b["left"], present, strategy._full["left"])
    draws = left.sample(strategy.mc_samples)
    mean, _ = gradient_moments("multiclass", draws, h, b["left"], strategy.variance_power)
    torch.testing.assert_close(gradient[1], mean[1, 0] / N)
    kept = b["present/left"]
    subset = strategy._posterior(ctx, group, layers, h[kept], b["left"][kept], present[kept], strategy._full["left"])
    torch.testing.assert_close(left.mean, subset.mean)


def test_a_checkpoint_mid_training_resumes_to_the_same_steps():
    task_list = tasks()

    def run(interrupt):
        model, strategy, optimizer, ctx = new_run(task_list)
        for epoch in range(2):
            for step in range(2):
                torch.manual_seed(100 * epoch + step)
                strategy.training_step(ctx, batch(10 * epoch + step, task_list))
                if interrupt and (epoch, step) == (1, 0):
                    saved = copy.deepcopy((model.state_dict(), strategy.state_dict(), optimizer.state_dict()))
                    model, strategy, optimizer, ctx = new_run(task_list)
                    model.load_state_dict(saved[0])
                    strategy.load_state_dict(saved[1])
                    optimizer.load_state_dict(saved[2])
            strategy.on_train_epoch_end(epoch)
        return model.state_dict()

    straight, resumed = run(False), run(True)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"prior_variance": 0.0}, "prior_variance must be a positive number"),
        ({"mc_samples": 1}, "mc_samples must be an integer >= 2"),
        ({"warmup_epochs": 0}, "warmup_epochs must be an integer >= 1"),
        ({"head_clip": -1.0}, "must be numbers >= 0"),
    ],
)
def test_bad_options_are_one_sentence(options, message):
    with pytest.raises(ConfigError, match=message):
        BayesAggMTL(**options)


def test_networks_and_losses_it_cannot_serve_are_refused_in_one_sentence():
    task_list = tasks()
    model = MultiLeNet(task_list, dropout="none")  # the two-layer heads
    strategy = BayesAggMTL()
    ctx = PlainContext(model, task_list, [torch.optim.SGD(model.parameters(), lr=0.1)])
    with pytest.raises(ConfigError, match="one linear layer on a shared vector"):
        strategy.training_step(ctx, batch(0, task_list))
    focal = [Task("a", "binary", losses.binary_focal)]
    model = LinearHeads(focal)
    ctx = PlainContext(model, focal, [torch.optim.SGD(model.parameters(), lr=0.1)])
    with pytest.raises(ConfigError, match="task 'a' \\(binary\\) is trained with another loss"):
        strategy.training_step(ctx, batch(0, focal))
