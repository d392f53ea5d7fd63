import cv2
import numpy as np
import pytest
import torch
from torchmetrics.segmentation import DiceScore

from medmtl.data.heatmap import centre_of_mass, gaussian_heatmap
from medmtl.metrics.refuge import dice
from medmtl.postprocess import largest_connected_component, vertical_cup_to_disc_ratio


def ellipse(shape, centre, axes):
    canvas = np.zeros(shape, np.uint8)
    cv2.ellipse(canvas, centre, axes, 0, 0, 360, 1, thickness=-1)
    return canvas


@pytest.mark.parametrize("disc_b,cup_b", [(30, 12), (40, 30), (25, 25)])
def test_vcdr_of_drawn_ellipses(disc_b, cup_b):
    # a filled ellipse with vertical semi-axis b spans 2b + 1 rows in its central column
    od = ellipse((128, 128), (64, 64), (20, disc_b))
    oc = ellipse((128, 128), (64, 64), (10, cup_b)) & od
    assert vertical_cup_to_disc_ratio(od, oc) == pytest.approx((2 * cup_b + 1) / (2 * disc_b + 1))


def test_vcdr_of_empty_disc_is_zero():
    assert vertical_cup_to_disc_ratio(np.zeros((8, 8)), np.zeros((8, 8))) == 0.0


def test_largest_connected_component_keeps_the_biggest_blob():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:5, 2:5] = 1  # 9 px
    mask[10:18, 10:16] = 1  # 48 px
    mask[0, 19] = 1
    kept = largest_connected_component(mask)
    assert kept.sum() == 48 and kept[10:18, 10:16].all()
    assert largest_connected_component(np.zeros((4, 4))).sum() == 0


def test_dice_agrees_with_torchmetrics_per_image():
    rng = np.random.default_rng(0)
    preds = rng.random((4, 16, 16)) > 0.5
    targets = rng.random((4, 16, 16)) > 0.4
    ours = [dice(p, t) for p, t in zip(preds, targets)]
    metric = DiceScore(
        num_classes=1, include_background=True, average="micro", aggregation_level="samplewise", input_format="one-hot"
    )
    for p, t, value in zip(preds, targets, ours):
        reference = metric(torch.tensor(p)[None, None].long(), torch.tensor(t)[None, None].long())
        assert value == pytest.approx(float(reference), abs=1e-6)


@pytest.mark.parametrize("x0,y0", [(30.0, 40.0), (17.3, 52.6), (63.5, 20.25)])
def test_heatmap_centre_of_mass_round_trip(x0, y0):
    heatmap = gaussian_heatmap(96, 128, x0, y0, variance=12.5)
    assert heatmap.max() == pytest.approx(1.0, abs=0.05)
    xy = centre_of_mass(torch.from_numpy(heatmap)[None])[0]
    assert xy.tolist() == pytest.approx([x0, y0], abs=1e-3)
