"""Loss-weighting strategies against their formulas (docs/methods.md)."""

import math

import pytest
import torch

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.strategies import DynamicWeightAverage, EqualWeights, FixedWeights, UncertaintyWeighting
from medmtl.tasks import refuge_tasks

TASKS = ["glaucoma", "od", "oc", "fovea"]


def test_uncertainty_total_matches_kendall_formula():
    strategy = UncertaintyWeighting()
    strategy.setup(TASKS)
    with torch.no_grad():
        strategy.log_variance.copy_(torch.tensor([0.0, 1.0, -0.5, 2.0]))
    losses = {"glaucoma": torch.tensor(0.3), "od": torch.tensor(1.2), "fovea": torch.tensor(0.05)}
    s = {"glaucoma": 0.0, "od": 1.0, "fovea": 2.0}
    expected = sum((math.exp(-s[k]) * float(v) + s[k]) / 2 for k, v in losses.items())
    assert strategy.weighted_total(losses).item() == pytest.approx(expected, rel=1e-6)


def test_uncertainty_parameters_are_trained_by_the_optimizer():
    strategy = UncertaintyWeighting()
    strategy.setup(TASKS)
    model = tiny_unet(dtype=torch.float32)
    optimizers = strategy.configure_optimizers(model, lambda p: torch.optim.Adam(p, lr=0.1))
    strategy.training_step(PlainContext(model, refuge_tasks(), optimizers), random_batch(0, dtype=torch.float32))
    # dL/ds_k = (1 - L_k exp(-s_k)) / 2 != 0, so one Adam step moves every s_k by about lr
    assert torch.all(strategy.log_variance.detach().abs() > 0.05)


def test_dwa_weights_follow_the_formula_after_two_epochs():
    strategy = DynamicWeightAverage(temperature=2.0)
    strategy.setup(["a", "b"])
    assert strategy.current_weights().tolist() == [1.0, 1.0]
    epochs = [{"a": [2.0, 4.0], "b": [1.0, 1.0]}, {"a": [1.0, 2.0], "b": [1.0, 1.0]}]
    for epoch, values in enumerate(epochs):
        for la, lb in zip(values["a"], values["b"]):
            strategy.record({"a": torch.tensor(la), "b": torch.tensor(lb)})
        if epoch == 0:
            strategy.on_train_epoch_end(epoch)
            assert strategy.current_weights().tolist() == [1.0, 1.0], "weights must stay 1 for two epochs"
    strategy.on_train_epoch_end(1)
    # means: a 3 -> 1.5 (r = 0.5), b 1 -> 1 (r = 1); w = 2 softmax(r / 2)
    ea, eb = math.exp(0.25), math.exp(0.5)
    assert strategy.current_weights().tolist() == pytest.approx([2 * ea / (ea + eb), 2 * eb / (ea + eb)])
    total = strategy.weighted_total({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    assert total.item() == pytest.approx(2 * ea / (ea + eb) + 4 * eb / (ea + eb))


def test_dwa_weights_never_read_a_value_on_the_host():
    """On the meta device a Python branch on a tensor raises: the per-step weights of DWA must be
    computed without one (on a GPU it would stall every step)."""
    strategy = DynamicWeightAverage()
    strategy.setup(["a", "b"])
    strategy.to("meta")
    assert strategy.current_weights().device.type == "meta"


def test_dwa_history_is_in_the_state_dict():
    strategy = DynamicWeightAverage()
    strategy.setup(["a", "b"])
    strategy.record({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    strategy.on_train_epoch_end(0)
    restored = DynamicWeightAverage()
    restored.setup(["a", "b"])
    restored.load_state_dict(strategy.state_dict())
    assert restored.history[1].tolist() == [2.0, 3.0]


def test_fixed_weights_formula_and_validation():
    strategy = FixedWeights({"a": 0.5, "b": 3.0})
    strategy.setup(["a", "b"])
    assert strategy.weighted_total({"a": torch.tensor(2.0), "b": torch.tensor(1.0)}).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="missing \\['c'\\]"):
        FixedWeights({"a": 1.0, "b": 1.0}, default_weight=None).setup(["a", "b", "c"])
    with pytest.raises(ValueError, match="names \\['typo'\\]"):
        FixedWeights({"typo": 2.0}).setup(["a", "b"])


def test_fixed_weights_default_applies_to_unnamed_tasks():
    strategy = FixedWeights({"b": 3.0}, default_weight=0.5)
    strategy.setup(["a", "b", "c"])
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(1.0), "c": torch.tensor(4.0)}
    assert strategy.weighted_total(losses).item() == pytest.approx(0.5 * 2 + 3 * 1 + 0.5 * 4)


def test_absent_task_contributes_nothing_to_the_sum():
    model = tiny_unet()
    strategy = EqualWeights()
    (optimizer,) = strategy.configure_optimizers(model, lambda p: torch.optim.SGD(p, lr=0.0))
    batch = random_batch(1) | {"present/od": torch.tensor([False, False])}
    logged = strategy.training_step(PlainContext(model, refuge_tasks(), [optimizer]), batch)
    assert "loss/od" not in logged
    assert model.dense_heads["od"].weight.grad is None


def test_dtp_weights_follow_the_focal_formula_on_smoothed_kpis():
    from medmtl.strategies import DynamicTaskPrioritization

    strategy = DynamicTaskPrioritization(gamma={"glaucoma": 2.0, "od": 1.0, "oc": 1.0, "fovea": 0.5}, ema=0.5)
    strategy.setup(TASKS)
    tasks = refuge_tasks()
    batch = random_batch(0)
    logits = {
        "glaucoma": torch.tensor([3.0, 3.0], dtype=torch.float64),  # predicts 1, 1 vs labels 1, 0: accuracy 0.5
        "od": (batch["od"] * 20 - 10),  # perfect segmentation: Dice 1
        "oc": torch.full_like(batch["oc"], -10.0),  # empty prediction: Dice 0 where the cup exists
        "fovea": torch.zeros_like(batch["fovea_heatmap"]),
    }
    ctx = PlainContext(None, tasks, [])
    strategy.observe(ctx, batch, logits, {})
    strategy.observe(ctx, batch, logits | {"glaucoma": torch.tensor([3.0, -3.0], dtype=torch.float64)}, {})
    kappa_glaucoma = 0.5 * 0.5 + 0.5 * 1.0  # EMA of accuracies 0.5 then 1.0
    assert strategy.kappa[0].item() == pytest.approx(kappa_glaucoma)
    assert strategy.kappa[1].item() == pytest.approx(1.0)
    weights = strategy.task_weights()
    assert weights[0].item() == pytest.approx(-((1 - kappa_glaucoma) ** 2) * math.log(kappa_glaucoma))
    assert weights[1].item() == pytest.approx(-(1e-3) * math.log(1 - 1e-3))  # kappa clipped at 1 - 1e-3
    assert weights[2] > weights[0] > weights[1], "the hardest task must get the largest weight"


def test_random_loss_weighting_draws_softmax_normal_weights_per_iteration():
    """Lin et al. 2022: w = softmax(lambda), lambda ~ N(0, I_T), redrawn at every iteration, for every
    task of the set (an absent task's draw is left out, the others' unchanged)."""
    from medmtl.strategies.random_weighting import RandomLossWeighting

    names = ["glaucoma", "od", "oc", "fovea"]
    strategy = RandomLossWeighting()
    strategy.setup(names)
    losses = {n: torch.tensor(float(i + 1), dtype=torch.float64) for i, n in enumerate(names)}
    torch.manual_seed(5)
    first = strategy.weighted_total(losses)
    second = strategy.weighted_total({k: v for k, v in losses.items() if k != "oc"})
    torch.manual_seed(5)
    w1 = torch.softmax(torch.randn(4, dtype=torch.float64), dim=0)
    w2 = torch.softmax(torch.randn(4, dtype=torch.float64), dim=0)
    torch.testing.assert_close(first, (w1 * torch.tensor([1.0, 2, 3, 4], dtype=torch.float64)).sum())
    torch.testing.assert_close(second, w2[0] * 1 + w2[1] * 2 + w2[3] * 4)
    assert not torch.allclose(w1, w2)
