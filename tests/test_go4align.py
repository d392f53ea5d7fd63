"""GO4Align (Shen et al. 2024) against a reference written from the authors' update: the
indicators, scales and groups computed with NumPy and scikit-learn's KMeans, never with our code;
the exact one-dimensional k-means against KMeans and against every labelling of a few values."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from medmtl.strategies import GroupAlignment
from medmtl.strategies.go4align import kmeans_1d


def inertia(values, labels):
    values, labels = np.asarray(values), np.asarray(labels)
    return sum(((values[labels == g] - values[labels == g].mean()) ** 2).sum() for g in set(labels.tolist()))


def sklearn_centres(values, groups):
    """Each value's k-means centre by scikit-learn (many restarts: the optimum for a few points)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    fit = KMeans(n_clusters=min(groups, len(values)), n_init=50, random_state=0).fit(x)
    return fit.cluster_centers_[fit.labels_, 0], fit.inertia_


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("groups", [1, 2, 3, 5])
def test_kmeans_1d_reaches_the_least_within_group_sum_of_squares(seed, groups):
    values = np.random.default_rng(seed).gamma(2.0, 1.0, size=6)
    labels = kmeans_1d(values.tolist(), groups)
    k = min(groups, len(values))
    assert sorted(set(labels)) == list(range(k))
    brute = min(inertia(values, lab) for lab in itertools.product(range(k), repeat=len(values)) if len(set(lab)) == k)
    assert inertia(values, labels) == pytest.approx(brute, rel=1e-12, abs=1e-12)
    centres, sk_inertia = sklearn_centres(values, groups)
    assert inertia(values, labels) == pytest.approx(sk_inertia, rel=1e-9, abs=1e-12)
    ours = np.array([values[np.asarray(labels) == g].mean() for g in labels])
    np.testing.assert_allclose(ours, centres, rtol=1e-9)


def reference_weights(loss_steps, groups, eta):
    """The authors' update, step by step: p <- p exp(-eta L) / sum, gamma = (sum L / L) p, every
    task weighted by its k-means group's centre (scikit-learn)."""
    t = len(loss_steps[0])
    p = np.full(t, 1.0 / t)
    weights = []
    for losses in loss_steps:
        losses = np.asarray(losses, dtype=np.float64)
        p = p * np.exp(-eta * losses)
        p = p / p.sum()
        gamma = losses.sum() / losses * p
        centres, _ = sklearn_centres(gamma, groups)
        weights.append(centres)
    return weights


NAMES = ["seg", "depth", "normals", "edge"]
LOSS_STEPS = [[2.3, 0.41, 0.9, 0.05], [1.9, 0.38, 0.7, 0.06], [1.2, 0.5, 0.66, 0.02]]


@pytest.mark.parametrize("groups", [1, 2, 3, 4])
def test_the_weighted_sum_carries_the_reference_weights_over_steps(groups):
    eta = 0.3  # large enough for the indicators to move visibly in three steps
    strategy = GroupAlignment(num_groups=groups, robust_step_size=eta)
    strategy.setup(NAMES)
    expected = reference_weights(LOSS_STEPS, groups, eta)
    for step, values in enumerate(LOSS_STEPS):
        losses = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in zip(NAMES, values)}
        strategy.observe(None, None, None, losses)
        strategy.weighted_total(losses).backward()
        got = np.array([losses[n].grad.item() for n in NAMES])  # d(sum_k w_k L_k)/dL_k = w_k
        np.testing.assert_allclose(got, expected[step], rtol=1e-10)
    if groups == 1:  # one group: every task gets the mean of gamma
        assert np.ptp(expected[-1]) == 0
    if groups == 4:  # as many groups as tasks: w_k = gamma_k, all distinct here
        assert len(set(np.round(expected[-1], 12))) == 4


def test_an_absent_task_keeps_its_indicator_and_gets_no_weight():
    eta = 0.5
    strategy = GroupAlignment(num_groups=2, robust_step_size=eta)
    strategy.setup(NAMES)
    present = {"seg": 2.0, "normals": 0.5, "edge": 0.1}
    losses = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in present.items()}
    strategy.observe(None, None, None, losses)
    p = np.array([0.25 * np.exp(-eta * 2.0), 0.25, 0.25 * np.exp(-eta * 0.5), 0.25 * np.exp(-eta * 0.1)])
    p /= p.sum()
    np.testing.assert_allclose(strategy.probs.numpy(), p, rtol=1e-12)
    strategy.weighted_total(losses).backward()
    values = np.array(list(present.values()))
    gamma = values.sum() / values * p[[0, 2, 3]]
    centres, _ = sklearn_centres(gamma, 2)
    np.testing.assert_allclose([losses[n].grad.item() for n in present], centres, rtol=1e-10)
    assert set(strategy.weights_to_log()) == {f"weight/{n}" for n in present}


def test_the_indicators_are_checkpointed():
    strategy = GroupAlignment(robust_step_size=0.2)
    strategy.setup(NAMES)
    strategy.observe(None, None, None, {n: torch.tensor(v) for n, v in zip(NAMES, LOSS_STEPS[0])})
    restored = GroupAlignment(robust_step_size=0.2)
    restored.setup(NAMES)
    restored.load_state_dict(strategy.state_dict())
    torch.testing.assert_close(restored.probs, strategy.probs)
    assert not torch.allclose(restored.probs, torch.full((4,), 0.25, dtype=torch.float64))
