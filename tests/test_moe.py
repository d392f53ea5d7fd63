"""MoE DeepLabV3+ (Roy 2025): routing by hand, gate losses, the backbone learning rate, and training
with every strategy on the synthetic IDRiD with partial labels."""

from functools import partial

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train, options, quiet_trainer
from medmtl.catalogue import needs_linear_readout
from medmtl.data.idrid import idrid_tasks
from medmtl.data.idrid_synthetic import SyntheticIdridDataModule
from medmtl.errors import WeightsNotFoundError
from medmtl.models.moe_deeplabv3p import MoEDeepLabV3Plus, top_p_mask
from medmtl.module import MultiTaskModule, with_scaled_groups

TINY = dict(backbone="test_resnet", aspp_channels=8, decoder_channels=8, classifier_channels=8)


@pytest.mark.parametrize("of", ["raw", "normalised"])
def test_top_p_keeps_the_fewest_experts_reaching_p(of):
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.05],  # sums to 1: raw = q. .9 alone reaches 0.8
            [0.4, 0.4, 0.2],  # .4 .4 .2: two experts (0.8)
            [0.3, 0.5, 0.2],  # .5 then .3 -> 0.8 with two
            [0.34, 0.33, 0.33],
        ]
    )  # .34 .33 .33: .67 < .8 -> all three
    assert top_p_mask(scores, 0.8, of).tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, False],
        [True, True, True],
    ]


def test_top_p_on_raw_confidence_differs_from_normalised_scores():
    """Roy 2025: "the most confident experts such that their combined confidence score is at least p"."""
    scores = torch.tensor(
        [
            [0.9, 0.9, 0.9],  # raw: 0.9 >= 0.8 alone; q = 1/3 each: all three
            [0.2, 0.2, 0.1],
        ]
    )  # raw: 0.5 < 0.8, all three; q = .4 .4 .2: two
    assert top_p_mask(scores, 0.8, "raw").tolist() == [[True, False, False], [True, True, True]]
    assert top_p_mask(scores, 0.8, "normalised").tolist() == [[True, True, True], [True, True, False]]


def test_moe_blocks_have_the_authors_layer_counts():
    """Counted by hand from the authors' code's layer list (Roy 2025), 3 experts, on ResNet-18's
    widths (C = 512 final, 64 at stride 4): every convolution with a bias, batch norm after the
    depthwise-separable pairs; the classification gate on C, the segmentation gate on the ASPP's A."""
    model = MoEDeepLabV3Plus(
        [t for t in idrid_tasks() if t.name in ("retinopathy", "od")], backbone="resnet18", input_normalization="none"
    )
    C, low, A, W, P, H, E, k = 512, 64, 256, 256, 64, 256, 3, 5
    count = lambda module: sum(p.numel() for p in module.parameters())
    separable = lambda i, o, bn=True: i * 9 + i + i * o + o + (2 * o if bn else 0)
    aspp = (C * A + A + 2 * A) + 3 * separable(C, A) + (C * A + A + 2 * A) + (5 * A * A + A + 2 * A)
    assert count(model.aspp) == aspp
    segmentation = (low * P + P + 2 * P) + separable(A + P, W) + (W + 1)
    assert count(model.experts["od"]) == E * segmentation
    classification = separable(C, C // 2, bn=False) + (C // 2 * H + H) + (H * k + k)
    assert count(model.experts["retinopathy"]) == E * classification
    assert count(model.gates["retinopathy"]) == C * E + E and count(model.gates["od"]) == A * E + E


def test_the_classification_expert_is_the_authors_pool_separable_conv_and_mlp():
    """Written from the description: pool to 11 x 16, depthwise 3x3 of stride 2 and pointwise to
    C / 2, global mean, linear, ReLU, (dropout, off in eval), linear."""
    model = MoEDeepLabV3Plus([t for t in idrid_tasks() if t.name == "retinopathy"], **TINY).eval()
    expert = model.experts["retinopathy"][0]
    depthwise, pointwise = expert.body[1]
    first, last = expert.mlp[0], expert.mlp[3]
    x = torch.rand(2, depthwise.in_channels, 7, 9)
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, (11, 16))
    y = torch.nn.functional.conv2d(pooled, depthwise.weight, depthwise.bias, stride=2, padding=1, groups=x.shape[1])
    y = torch.nn.functional.conv2d(y, pointwise.weight, pointwise.bias).mean(dim=(2, 3))
    expected = torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(y, first.weight, first.bias)), last.weight, last.bias
    )
    with torch.no_grad():
        torch.testing.assert_close(expert(x), expected)
    assert pointwise.out_channels == x.shape[1] // 2


def _model(**options):
    return MoEDeepLabV3Plus(idrid_tasks(["od", "he"]), **(TINY | options)).eval()


def test_dense_routing_is_the_score_weighted_mean_then_top_p_after_the_switch():
    model = _model()
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        low, high = model.backbone(model.input_normalization(image))
        scores = torch.sigmoid(model.gates["retinopathy"](high.mean(dim=(-2, -1))))
        experts = torch.stack([e(high) for e in model.experts["retinopathy"]], dim=1)
        expected = (scores[:, :, None] * experts).sum(1) / scores.sum(1, keepdim=True)
        torch.testing.assert_close(model(image, ["retinopathy"])["retinopathy"], expected)
        assert model.routing_statistics() == {"retinopathy": 3.0}
        model.set_training_progress(0.5)
        kept = top_p_mask(scores, 0.8, "raw")
        w = scores * kept
        expected = (w[:, :, None] * experts).sum(1) / w.sum(1, keepdim=True)
        torch.testing.assert_close(model(image, ["retinopathy"])["retinopathy"], expected)
        assert model.routing_statistics()["retinopathy"] == pytest.approx(kept.sum(1).float().mean().item())
    assert bool(model.state_dict()["top_p_active"]), "the routing phase must be saved with the weights"


def test_gate_losses_are_finite_and_weighted():
    image = torch.rand(2, 3, 64, 64)
    quiet = _model(l1_weight=0.0, balance_weight=0.0, entropy_weight=0.0)
    quiet(image)
    assert float(quiet.auxiliary_loss("od")) == 0.0
    model = _model()
    out = model(image)
    assert set(out) == {"retinopathy", "edema", "od", "he"} and out["od"].shape == (2, 64, 64)
    assert all(torch.isfinite(model.auxiliary_loss(t)) for t in out)


def test_backbone_learns_at_a_tenth_of_the_rate():
    model = _model()
    optimizer = with_scaled_groups(partial(torch.optim.AdamW, lr=3e-4), model, {"backbone": 0.1})(model.parameters())
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert all(rates[id(p)] == pytest.approx(3e-5) for p in model.backbone.parameters())
    assert all(rates[id(p)] == pytest.approx(3e-4) for p in model.gates.parameters())


@pytest.fixture(scope="module")
def idrid_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("idrid_synthetic") / "idrid"
    SyntheticIdridDataModule(str(root), resolution=(32, 48)).prepare_data()
    return root


#: the default run trains these; CI's slow run trains every strategy
REPRESENTATIVE = {"vanilla", "mtl_io", "ga", "pcgrad", "mgda_ub", "gradnorm", "stl"}


@pytest.mark.parametrize(
    "optim_name",
    [
        pytest.param(o, marks=[] if o in REPRESENTATIVE else [pytest.mark.slow])
        for o in options("optim")
        if not needs_linear_readout(o)  # BayesAgg-MTL: refused on dense heads (test_bayesagg.py)
    ],
)
def test_every_strategy_trains_the_moe_with_partial_labels(optim_name, idrid_root, tmp_path):
    cfg = compose_train([f"optim={optim_name}"])
    dm = SyntheticIdridDataModule(str(idrid_root), resolution=(32, 48), batch_size=4, lesions=["od", "he", "se"])
    torch.manual_seed(0)
    module = MultiTaskModule(
        model=partial(MoEDeepLabV3Plus, **TINY, dense_fraction=0.5),
        strategy=instantiate(cfg.optim.strategy),
        tasks=dm.tasks,
        optimizer=instantiate(cfg.optim.optimizer),
        backbone_lr_scale=0.1,
    )
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    assert module.iterations == 4
    assert all(torch.isfinite(p).all() for p in module.parameters()), "a NaN reached the weights"
    # epoch 2 of 2 started past dense_fraction 0.5: every network routes top-p (stl: one per task)
    routers = [m for m in module.model.modules() if isinstance(m, MoEDeepLabV3Plus)]
    assert routers and all(bool(m.top_p_active) for m in routers)


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("network", ["moe", "deeplabv3p"])
def test_a_short_run_on_the_real_sample_segments_the_optic_disc(tmp_path, network):
    """The 20 real IDRiD images (OD and HE masks): after a short run the held-out OD Dice is far
    above the untrained network's, for the MoE network and for the DeepLabV3+ baseline."""
    import shutil

    from helpers import IDRID_SAMPLE as REAL
    from medmtl.data.idrid import IdridDataModule
    from medmtl.models.deeplabv3p import DeepLabV3Plus

    if not (REAL / "A. Segmentation").is_dir():
        pytest.skip(f"the IDRiD sample is not at {REAL}")
    root = tmp_path / "idrid"
    shutil.copytree(REAL, root)

    def od_dice(epochs):
        torch.manual_seed(0)
        grades = ["retinopathy", "edema"] if network == "moe" else []
        dm = IdridDataModule(
            str(root),
            resolution=(64, 96),
            lesions=["od", "he"],
            grades=grades,
            batch_size=4,
            val_fraction=0.25,
            skip_bad_samples=True,
        )  # the sample has no grading images
        cfg = compose_train(["optim=vanilla"])
        model = (
            partial(MoEDeepLabV3Plus, **TINY)
            if network == "moe"
            else partial(DeepLabV3Plus, backbone="resnet18", decoder_channels=16)
        )
        module = MultiTaskModule(
            model=model, strategy=instantiate(cfg.optim.strategy), tasks=dm.tasks, optimizer=partial(torch.optim.AdamW, lr=3e-3)
        )
        trainer = quiet_trainer(tmp_path, max_epochs=epochs)
        if epochs:
            trainer.fit(module, datamodule=dm)
        return trainer.validate(module, datamodule=dm, verbose=False)[0]["val/od_dice"]

    untrained, trained = od_dice(0), od_dice(40)
    assert trained > 0.5 and trained > untrained + 0.3, (untrained, trained)


def test_imagenet_input_normalization_is_the_standardised_image_through_the_same_weights():
    normalised, plain = _model(input_normalization="imagenet"), _model(input_normalization="none")
    plain.load_state_dict(normalised.state_dict())  # the statistics are not part of the checkpoint
    image = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normalised(image)["he"], plain((image - mean) / std)["he"])


def test_backbone_weights_load_from_a_bare_file_name_in_the_torch_cache(tmp_path, monkeypatch):
    import timm

    source = timm.create_model("test_resnet")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / "tiny.pth")
    model = _model(weights_path="tiny.pth")
    theirs = source.state_dict()
    loaded = {k: v for k, v in model.backbone.state_dict().items() if k in theirs}
    assert len(loaded) > 10
    for name, value in loaded.items():
        torch.testing.assert_close(value, theirs[name], msg=name)
    with pytest.raises(WeightsNotFoundError, match="model.weights_path=null"):
        _model(weights_path="absent.pth")


def test_plain_and_lightning_contexts_are_one_implementation_with_the_gate_losses():
    """Strategies driven in plain PyTorch see the MoE gate losses as under Lightning."""
    from medmtl.strategies.context import PlainContext, TrainingContext
    from medmtl.tasks import compute_losses

    model = _model().train()
    tasks = idrid_tasks(["od", "he"])
    batch = {
        "image": torch.rand(2, 3, 64, 64),
        "od": (torch.rand(2, 64, 64) > 0.5).float(),
        "he": (torch.rand(2, 64, 64) > 0.5).float(),
        "retinopathy": torch.tensor([0, 3]),
        "edema": torch.tensor([1, 2]),
    }
    ctx = PlainContext(model, tasks, [])
    assert isinstance(ctx, TrainingContext)
    outputs = ctx.forward(batch)
    with_gates = ctx.losses(outputs, batch)
    plain = compute_losses(tasks, outputs, batch)
    for name in plain:
        torch.testing.assert_close(with_gates[name] - plain[name], model.auxiliary_loss(name))
        assert model.auxiliary_loss(name).abs() > 0
