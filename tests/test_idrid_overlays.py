"""IDRiD examples and figures (Roy 2025 Figs. 4-5): what the evaluator keeps, the tint, the
figure from a report over runs that saw different image sets, and the AUPR against torchmetrics."""

import json

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAveragePrecision

from medmtl.analysis.idrid_overlays import LESION_COLOURS, tint
from medmtl.analysis.overlays import panels_with_captions
from medmtl.analysis.report import write_report
from medmtl.data.idrid import idrid_tasks
from medmtl.metrics.aupr import BinnedAveragePrecision
from medmtl.metrics.idrid import IdridEvaluator


def _batch():
    """Three images: a segmentation image (OD mask, no HE mask), two grading images."""
    od = torch.zeros(3, 4, 6)
    od[0, 1:3, 1:4] = 1
    return {
        "image": torch.rand(3, 3, 4, 6),
        "index": torch.tensor([10, 20, 21]),
        "od": od,
        "he": torch.zeros(3, 4, 6),
        "present/od": torch.tensor([True, False, False]),
        "present/he": torch.tensor([False, False, False]),
        "retinopathy": torch.tensor([0, 3, 1]),
        "edema": torch.tensor([0, 2, 0]),
        "present/retinopathy": torch.tensor([False, True, True]),
        "present/edema": torch.tensor([False, True, True]),
    }


def test_evaluator_keeps_the_first_image_of_each_set_with_absent_grades_as_minus_one():
    evaluator = IdridEvaluator(idrid_tasks(["od", "he"]), examples_per_set=1)
    outputs = {
        "od": torch.randn(3, 4, 6),
        "he": torch.randn(3, 4, 6),
        "retinopathy": torch.randn(3, 5),
        "edema": torch.randn(3, 3),
    }
    evaluator.update(outputs, _batch())
    kept = evaluator.predictions()
    assert kept["example_index"].tolist() == [10, 20]  # one per image set; image 21 is a third
    assert kept["example_grade_true"].tolist() == [[-1, -1], [3, 2]]
    assert kept["example_grade_pred"].tolist() == [
        [int(outputs["retinopathy"][i].argmax()), int(outputs["edema"][i].argmax())] for i in (0, 1)
    ]
    assert kept["example_lesion_present"].tolist() == [[True, False], [False, False]]
    np.testing.assert_array_equal(kept["example_lesion_pred"][0, 0], (outputs["od"][0] > 0).numpy())  # sigmoid > 0.5
    np.testing.assert_array_equal(kept["example_lesion_true"][0, 0], _batch()["od"][0].numpy() > 0.5)
    assert list(kept["example_lesion_names"]) == ["od", "he"]
    panels, captions = panels_with_captions({k.removeprefix("example_"): v for k, v in kept.items()})
    assert panels[0].shape == (4, 12, 3) and panels[0].dtype == np.uint8
    assert captions[1].endswith(
        f"predicted: retinopathy {kept['example_grade_pred'][1][0]}, edema {kept['example_grade_pred'][1][1]}"
    )


def test_tint_blends_each_lesion_colour():
    image = np.full((2, 2, 3), 100, np.uint8)
    masks = np.zeros((2, 2, 2), bool)
    masks[0, 0, 0] = True  # od at (0, 0)
    masks[1, 1, 1] = True  # ex at (1, 1)
    rgb = tint(image, masks, ["od", "ex"], alpha=0.5)
    np.testing.assert_allclose(rgb[0, 0], 0.5 * 100 / 255 + 0.5 * np.array(LESION_COLOURS["od"]))
    np.testing.assert_allclose(rgb[1, 1], 0.5 * 100 / 255 + 0.5 * np.array(LESION_COLOURS["ex"]))
    np.testing.assert_allclose(rgb[0, 1], 100 / 255)


def _run(folder, model, examples):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- optim=vanilla\n")
    record = {"test": {"od_dice": 0.5}, "strategy": "vanilla", "model": model, "seed": 0, "lr": 3e-4}
    (folder / "metrics.json").write_text(json.dumps(record))
    np.savez(folder / "predictions.npz", **examples)


def test_report_draws_the_idrid_figure_for_networks_that_saw_different_images(tmp_path):
    """The segmenter kept a segmentation image, the classifier a grading image, the MoE both."""
    evaluator = IdridEvaluator(idrid_tasks(["od"]), examples_per_set=1)
    outputs = {"od": torch.randn(3, 4, 6), "retinopathy": torch.randn(3, 5), "edema": torch.randn(3, 3)}
    batch = {k: v for k, v in _batch().items() if "he" not in k}
    evaluator.update(outputs, batch)
    _run(tmp_path / "0", "MoEDeepLabV3Plus", evaluator.predictions())
    segmenter = IdridEvaluator(idrid_tasks(["od"], grades=[]), examples_per_set=1)
    segmenter.update({"od": outputs["od"]}, {k: v for k, v in batch.items() if k in ("image", "index", "od", "present/od")})
    _run(tmp_path / "1", "DeepLabV3Plus", segmenter.predictions())
    classifier = IdridEvaluator(idrid_tasks([], grades=["retinopathy", "edema"]), examples_per_set=1)
    classifier.update({k: outputs[k] for k in ("retinopathy", "edema")}, {k: v for k, v in batch.items() if "od" not in k})
    _run(tmp_path / "2", "ResNetClassifier", classifier.predictions())
    output = write_report(tmp_path)
    figure = output / "overlay.png"
    assert figure.is_file() and figure.stat().st_size > 10_000


@pytest.mark.parametrize("thresholds", [2, 11, 200])
def test_binned_aupr_equals_torchmetrics(thresholds):
    generator = torch.Generator().manual_seed(thresholds)
    truth = torch.rand(4000, generator=generator) < 0.15
    probability = torch.rand(4000, generator=generator) * 0.7 + truth * 0.3
    ours, reference = BinnedAveragePrecision(thresholds), BinaryAveragePrecision(thresholds=thresholds)
    for p, t in zip(probability.split(1000), truth.split(1000)):  # accumulated over batches
        ours.update(p, t)
        reference.update(p, t.long())
    assert ours.compute() == pytest.approx(float(reference.compute()), abs=1e-6)
    assert np.isnan(BinnedAveragePrecision(thresholds).compute())  # no positive pixel: undefined
