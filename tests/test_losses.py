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


# ----- scene losses: each over the valid pixels of each sample, against hand computations -----------
def test_semantic_cross_entropy_leaves_unlabelled_pixels_out_per_sample():
    from medmtl.losses import semantic_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 5, 4, 4, generator=g), torch.randint(0, 5, (2, 4, 4), generator=g)
    target[0, :2] = -1  # half of sample 0 unlabelled
    target[1] = -1
    target[1, 0, 0] = 3  # sample 1: one labelled pixel
    loss = semantic_cross_entropy(logits, target)
    labelled = target[0] >= 0
    expected0 = torch.nn.functional.cross_entropy(logits[0].permute(1, 2, 0)[labelled], target[0][labelled])
    expected1 = -torch.log_softmax(logits[1, :, 0, 0], dim=0)[3]
    torch.testing.assert_close(loss, torch.stack([expected0, expected1]))


def test_depth_l1_counts_valid_pixels_only_and_sends_no_gradient_to_invalid_ones():
    from medmtl.losses import depth_l1

    target = torch.tensor([[[2.0, 0.0], [4.0, 1.0]]])  # one invalid pixel
    prediction = torch.tensor([[[2.5, 9.0], [3.0, 1.0]]], requires_grad=True)
    loss = depth_l1(prediction, target)
    torch.testing.assert_close(loss, torch.tensor([(0.5 + 1.0 + 0.0) / 3]))
    loss.sum().backward()
    assert prediction.grad[0, 0, 1] == 0


def test_normals_losses_by_hand():
    from medmtl.losses import normals_cosine, normals_l1

    truth = torch.zeros(1, 3, 1, 2)
    truth[0, 2, 0, 0] = -1.0  # pixel 0 faces the camera; pixel 1 invalid (zero vector)
    prediction = torch.zeros(1, 3, 1, 2)
    prediction[0, :, 0, 0] = torch.tensor([0.0, 3**0.5 / 2, -0.5]) * 4.0  # 60 degrees away, length 4
    prediction[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(normals_cosine(prediction, truth), torch.tensor([0.5]))  # 1 - cos 60
    torch.testing.assert_close(normals_l1(prediction, truth), torch.tensor([3**0.5 / 2 + 0.5]))


def test_balanced_bce_by_hand():
    from medmtl.losses import balanced_bce

    logits, target = torch.tensor([[[0.0, 2.0]]]), torch.tensor([[[1.0, 0.0]]])
    w = 0.9
    expected = (-w * math.log(0.5) - (1 - w) * math.log(1 - 1 / (1 + math.exp(-2.0)))) / 2
    torch.testing.assert_close(balanced_bce(logits, target, positive_weight=w), torch.tensor([expected]))


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_alpha_focal_loss_matches_torchvision(alpha):
    from torchvision.ops import sigmoid_focal_loss

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(3, 1, 8, 8, generator=g) * 3, (torch.rand(3, 1, 8, 8, generator=g) > 0.7).float()
    theirs = sigmoid_focal_loss(logits, target, alpha=-1 if alpha is None else alpha, gamma=2.0, reduction="none")
    torch.testing.assert_close(losses.binary_focal(logits, target, 2.0, alpha), theirs.flatten(1).mean(1))


def test_one_hot_grading_focal_is_torchvision_on_one_hot_labels_plus_cross_entropy():
    from torchvision.ops import sigmoid_focal_loss

    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(4, 5, generator=g) * 2, torch.tensor([0, 4, 2, 2])
    one_hot = torch.nn.functional.one_hot(target, 5).float()
    focal = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="none").mean(1)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(losses.ce_plus_focal(logits, target, 2.0, 0.25, "one_hot"), ce + focal)
