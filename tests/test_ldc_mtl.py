"""LDC-MTL (Xiao et al. 2025) against the authors' NYUv2 training step written out by hand: initial
loss ratios from the first step, a router (linear layer, softmax, clamp to [0.2, 0.8]) on the batch
mean of the pooled features, the weighted loss divided by the weights' sum plus lambda times the
absolute differences of consecutive weighted losses, one backward and one step of network and
router together."""

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.errors import ConfigError
from medmtl.strategies import LossDiscrepancyControl
from medmtl.tasks import compute_losses, refuge_tasks


def new_strategy(tasks, **options):
    strategy = LossDiscrepancyControl(**options)
    strategy.setup([t.name for t in tasks])
    return strategy


def materialised_router(strategy, model, tasks, batch, bias=None):
    """Our router after its lazy initialisation (the initial A, b both sides start from); ``bias``
    replaces b (to push weights into the clamp)."""
    ctx = PlainContext(model, tasks, [torch.optim.SGD(model.parameters(), lr=0.0)])
    with torch.no_grad():
        strategy.task_weights(ctx, model.representation(batch["image"]))
        if bias is not None:
            strategy.router.bias.copy_(torch.tensor(bias))
    router = torch.nn.Linear(strategy.router.in_features, len(tasks)).double()
    router.load_state_dict(strategy.router.state_dict())
    return router


def authors_step(model, router, batch, tasks, state, lamb, lr):
    """One SGD step of their NYUv2 loop: features -> pooled -> batch mean -> router."""
    shared = model.representation(batch["image"])
    outputs = model.heads(shared)
    pooled = torch.cat([F.adaptive_avg_pool2d(t, (1, 1)).squeeze(-1).squeeze(-1) for t in shared.values()], dim=1)
    weights = torch.clamp(torch.softmax(router(pooled.mean(dim=0)), dim=-1), min=0.2, max=0.8)
    found = compute_losses(tasks, outputs, batch)
    losses = torch.stack([found[t.name] for t in tasks])
    if "ratios" not in state:
        initial_loss = losses.detach().clone()
        state["ratios"] = initial_loss / initial_loss.min()
    ratios = state["ratios"]
    weighted_loss = weights @ (losses / ratios) / weights.sum()
    wl = weights * (losses / ratios)
    total_loss = weighted_loss + lamb * torch.sum(torch.abs(wl[:-1] - wl[1:]))
    params = list(model.parameters()) + list(router.parameters())
    for p in params:
        p.grad = None
    total_loss.backward()
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= lr * p.grad
    return weights.detach()


@pytest.mark.parametrize(
    ("lamb", "bias"),
    [(0.05, None), (0.5, None), (0.05, [0.8, -1.5, 0.6, -1.5])],
    ids=["default", "large-lambda", "clamped"],
)
def test_three_steps_equal_the_authors_nyuv2_update_by_hand(lamb, bias):
    """Without clamping the softmax weights sum to 1 and sum_k w_k has no gradient; the "clamped"
    case starts with two of four weights at the lower bound, where the differentiated sum matters
    (not next to each other: at the first step every l_k equals min_j L_j(0), and two equal
    neighbours would put |w_k l_k - w_{k+1} l_{k+1}| at its kink, where rounding picks the sign)."""
    tasks = refuge_tasks()
    model = tiny_unet()
    reference = copy.deepcopy(model)
    batches = [random_batch(seed, n=3) for seed in (1, 2, 3)]
    lr = 0.05
    strategy = new_strategy(tasks, lamb=lamb)
    router = materialised_router(strategy, model, tasks, batches[0], bias)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(list(model.parameters()) + list(strategy.parameters()), lr=lr)])
    state = {}
    for batch in batches:
        logged = strategy.training_step(ctx, batch)
        weights = authors_step(reference, router, batch, tasks, state, lamb, lr)
        ours = torch.stack([logged[f"weight/{t.name}"] for t in tasks]).double()
        torch.testing.assert_close(ours, weights, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), tiny_unet().parameters()))
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(strategy.router.weight, router.weight)
    torch.testing.assert_close(strategy.router.bias, router.bias)


def test_objective_by_hand_for_the_other_variants():
    """F computed by hand from its definition for the free-weight, log-normalised variant (QM9's
    log ratio with CelebA's sigmoid weights and detached sum) and for no normalisation without the
    division (Cityscapes' weighting)."""
    names = ["a", "b", "c"]
    initial = {"a": 2.0, "b": 0.5, "c": 4.0}
    now = {"a": 1.0, "b": 0.25, "c": 5.0}
    w = torch.tensor([0.3, 0.9, 0.6], dtype=torch.float64)

    logged = LossDiscrepancyControl(lamb=0.1, weighting="free", normalisation="initial_log", weight_sum="detached")
    logged.setup(names)
    logged.record_initial_losses({k: torch.tensor(v, dtype=torch.float64) for k, v in initial.items()})
    got = logged.objective(w, {k: torch.tensor(v, dtype=torch.float64) for k, v in now.items()})
    logs = [torch.log(torch.tensor(now[k] / initial[k], dtype=torch.float64)) for k in names]
    wl = [w[i] * logs[i] for i in range(3)]
    expected = sum(wl) / w.sum() + 0.1 * (abs(wl[0] - wl[1]) + abs(wl[1] - wl[2]))
    torch.testing.assert_close(got, expected)

    plain = LossDiscrepancyControl(lamb=0.1, weighting="free", normalisation="none", weight_sum="none")
    plain.setup(names)
    got = plain.objective(w, {k: torch.tensor(v, dtype=torch.float64) for k, v in now.items()})
    wl = [w[i] * now[k] for i, k in enumerate(names)]
    torch.testing.assert_close(got, sum(wl) + 0.1 * (abs(wl[0] - wl[1]) + abs(wl[1] - wl[2])))


def test_free_weights_start_at_sigmoid_one_and_are_trained():
    tasks = refuge_tasks()
    model = tiny_unet()
    strategy = new_strategy(tasks, weighting="free", normalisation="none")
    ctx = PlainContext(model, tasks, [torch.optim.SGD(list(model.parameters()) + list(strategy.parameters()), lr=0.1)])
    logged = strategy.training_step(ctx, random_batch(4, n=2))
    torch.testing.assert_close(logged["weight/od"], torch.sigmoid(torch.tensor(1.0)))
    assert not torch.equal(strategy.logits.detach(), torch.ones(len(tasks)))


def test_partial_labels_keep_the_initial_ratio_of_the_first_step_and_add_a_late_task():
    """The optic cup is unlabelled at the first step: its L(0) is its first loss; the reference
    min_j L_j(0) stays that of the first step; F covers the present tasks only and stays finite."""
    tasks = refuge_tasks()
    model = tiny_unet()
    strategy = new_strategy(tasks)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(list(model.parameters()) + list(strategy.parameters()), lr=0.01)])
    first = random_batch(6, n=2) | {"present/oc": torch.zeros(2, dtype=torch.bool)}
    logged = strategy.training_step(ctx, first)
    assert "loss/oc" not in logged
    names = [t.name for t in tasks]
    present = [logged[f"loss/{n}"] for n in names if n != "oc"]
    assert torch.isnan(strategy.initial_losses[names.index("oc")])
    torch.testing.assert_close(strategy.reference_loss, torch.stack(present).min().float())
    reference = strategy.reference_loss.clone()
    second = strategy.training_step(ctx, random_batch(7, n=2))
    torch.testing.assert_close(strategy.initial_losses[names.index("oc")], second["loss/oc"].float())
    assert torch.equal(strategy.reference_loss, reference)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lamb": -0.1}, "optim.strategy.lamb must be a number >= 0, got -0.1"),
        ({"weighting": "softmax"}, "optim.strategy.weighting must be one of router, free, got 'softmax'"),
        ({"normalisation": "ratio"}, "optim.strategy.normalisation must be one of"),
        ({"weight_sum": "yes"}, "optim.strategy.weight_sum must be one of"),
        ({"clamp": [0.8, 0.2]}, "optim.strategy.clamp must be \\[low, high\\] with 0 <= low < high <= 1"),
    ],
)
def test_bad_options_are_one_sentence(options, message):
    with pytest.raises(ConfigError, match=message):
        LossDiscrepancyControl(**options)


def test_a_checkpoint_fits_a_fresh_strategy_whose_router_is_not_sized_yet(tmp_path):
    """Resuming builds the strategy anew (router unsized); the file's router fits it, while a
    wrong shape elsewhere is still refused."""
    from medmtl.checkpoints import check_fits
    from medmtl.errors import CheckpointError

    tasks = refuge_tasks()
    model = tiny_unet()
    trained = new_strategy(tasks)
    ctx = PlainContext(model, tasks, [torch.optim.SGD(list(model.parameters()) + list(trained.parameters()), lr=0.01)])
    trained.training_step(ctx, random_batch(8, n=2))
    path = tmp_path / "ldc.ckpt"
    torch.save({"state_dict": trained.state_dict()}, path)
    fresh = new_strategy(tasks)
    assert fresh.recorded() == set()
    check_fits(path, fresh.state_dict())
    fresh.load_state_dict(torch.load(path)["state_dict"])
    assert fresh.recorded() == {t.name for t in tasks}, "the loaded initial losses count as recorded"
    torch.testing.assert_close(fresh.reference_loss, trained.reference_loss)
    torch.testing.assert_close(fresh.router.weight, trained.router.weight, check_dtype=False)
    wrong = trained.state_dict() | {"initial_losses": torch.zeros(3)}
    torch.save({"state_dict": wrong}, path)
    with pytest.raises(CheckpointError, match="initial_losses is"):
        check_fits(path, fresh.state_dict())
