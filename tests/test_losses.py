import math

import pytest
import torch

from medmtl import losses
from medmtl.tasks import Task


def hand_focal(logit: float, y: int, gamma: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    pt = p if y == 1 else 1.0 - p
    return -((1.0 - pt) ** gamma) * math.log(pt)


@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
def test_focal_loss_matches_hand_computation(gamma):
    logits = torch.tensor([2.0, -1.0, 0.3, -4.0], dtype=torch.float64)
    target = torch.tensor([1, 1, 0, 0])
    got = losses.binary_focal(logits, target, gamma=gamma)
    expected = [hand_focal(z, y, gamma) for z, y in zip(logits.tolist(), target.tolist())]
    assert got.shape == (4,)
    assert got.tolist() == pytest.approx(expected, rel=1e-10)


def test_focal_loss_stays_finite_for_saturated_logits():
    got = losses.binary_focal(torch.tensor([80.0, -80.0]), torch.tensor([0, 1]))
    assert torch.isfinite(got).all() and (got > 0).all()


def test_bce_is_pixel_mean_per_sample():
    logits = torch.zeros(2, 3, 3)
    target = torch.ones(2, 3, 3)
    assert losses.binary_cross_entropy(logits, target).tolist() == pytest.approx([math.log(2)] * 2)


def test_sigmoid_l1_on_a_hand_example():
    logits = torch.tensor([[[0.0, 0.0]]])  # sigmoid -> 0.5
    target = torch.tensor([[[1.0, 0.0]]])
    assert losses.sigmoid_l1(logits, target).item() == pytest.approx(0.5)


def test_task_loss_ignores_unlabelled_samples_and_returns_none_without_labels():
    task = Task("g", "binary", losses.binary_cross_entropy)
    out = torch.tensor([0.0, 5.0])
    batch = {"g": torch.tensor([1.0, 0.0]), "present/g": torch.tensor([True, False])}
    assert task.compute_loss(out, batch).item() == pytest.approx(math.log(2))
    batch["present/g"] = torch.tensor([False, False])
    assert task.compute_loss(out, batch) is None
