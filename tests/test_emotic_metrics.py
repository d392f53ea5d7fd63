"""EMOTIC metrics against scikit-learn: AP per category and their mean, mean F1 at 0.5, MAE and
MSE per dimension; the 26-task outputs give the same numbers as the one multi-label output."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from medmtl.data.emotic import emotic_tasks
from medmtl.data.emotic_layout import CATEGORIES
from medmtl.metrics.emotic import CATEGORY_TASKS, EmoticEvaluator


def fake_split(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    truth = (torch.rand(n, 26, generator=g) < 0.3).float()
    truth[:, CATEGORIES.index("Yearning")] = 0  # no positive: left out of the means
    logits = torch.randn(n, 26, generator=g) + 1.5 * truth
    dims_true = 1 + 9 * torch.rand(n, 3, generator=g)
    dims_pred = dims_true + torch.randn(n, 3, generator=g)
    return logits, truth, dims_pred, dims_true


def test_two_task_metrics_equal_scikit_learn_over_batches():
    logits, truth, dims_pred, dims_true = fake_split()
    evaluator = EmoticEvaluator(emotic_tasks("2task"))
    for i in range(0, 40, 16):
        evaluator.update(
            {"categories": logits[i : i + 16], "dimensions": dims_pred[i : i + 16]},
            {"categories": truth[i : i + 16], "dimensions": dims_true[i : i + 16]},
        )
    result = evaluator.compute()
    probability = torch.sigmoid(logits).numpy()
    labelled = [k for k in range(26) if truth[:, k].sum() > 0]
    aps = [average_precision_score(truth[:, k].numpy(), probability[:, k]) for k in labelled]
    assert result["categories_map"] == pytest.approx(np.mean(aps), abs=1e-5)
    assert result["ap_anger"] == pytest.approx(aps[labelled.index(1)], abs=1e-5)
    assert "ap_yearning" not in result
    f1s = [f1_score(truth[:, k].numpy(), probability[:, k] >= 0.5) for k in labelled]
    assert result["categories_mf1"] == pytest.approx(np.mean(f1s), abs=1e-5)
    error = (dims_pred - dims_true).numpy()
    assert result["arousal_mae"] == pytest.approx(np.abs(error[:, 1]).mean(), rel=1e-5)
    assert result["dimensions_mae"] == pytest.approx(np.abs(error).mean(), rel=1e-5)
    assert result["dimensions_mse"] == pytest.approx((error**2).mean(), rel=1e-5)
    assert evaluator.TASK_METRICS == {"categories": "categories_map", "dimensions": "dimensions_mae"}
    assert "dimensions_mae" in evaluator.LOWER_IS_BETTER and "categories_map" not in evaluator.LOWER_IS_BETTER


def test_the_26_binary_tasks_score_as_the_multilabel_output():
    logits, truth, dims_pred, dims_true = fake_split(seed=1)
    joint = EmoticEvaluator(emotic_tasks("2task"))
    joint.update({"categories": logits, "dimensions": dims_pred}, {"categories": truth, "dimensions": dims_true})
    separate = EmoticEvaluator(emotic_tasks("26task"))
    outputs = {name: logits[:, k] for k, name in enumerate(CATEGORY_TASKS)}
    separate.update(outputs, {name: truth[:, k] for k, name in enumerate(CATEGORY_TASKS)})
    a, b = joint.compute(), separate.compute()
    for key in b:
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert separate.TASK_METRICS["doubt_confusion"] == "ap_doubt_confusion" and "dimensions_mae" not in b
