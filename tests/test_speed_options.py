"""Speed options (medmtl.speed) give the training of the default path to rounding: two steps of a
strategy with channels-last, and with the compiled forward, against the same two steps eager
(float64 and SGD, so that rounding differences stay rounding differences: Adam's g / sqrt(v) turns
them into whole steps where a gradient component is near zero)."""

import copy
import itertools

import pytest
import torch

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.catalogue import compose_train
from medmtl.speed import SpeedOptions
from medmtl.strategies import EqualWeights, IndependentOptimizers, PCGrad
from medmtl.tasks import refuge_tasks

STRATEGIES = {"vanilla": EqualWeights, "pcgrad": PCGrad, "mtl_io": IndependentOptimizers}


def two_steps(name: str, options: SpeedOptions) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = tiny_unet()
    options.prepare(model)
    strategy = STRATEGIES[name]()
    strategy.setup([t.name for t in refuge_tasks()])
    optimizers = strategy.configure_optimizers(model, lambda p: torch.optim.SGD(p, lr=0.1))
    batch = random_batch(0)
    batch["image"] = options.input(batch["image"])
    ctx = PlainContext(model, refuge_tasks(), optimizers, task_batches={t.name: itertools.repeat(batch) for t in refuge_tasks()})
    torch.manual_seed(1)
    for _ in range(2):
        strategy.training_step(ctx, batch)
    convolution = next(p for p in model.parameters() if p.dim() == 4)
    assert convolution.is_contiguous(memory_format=torch.channels_last) == options.channels_last
    assert (model._compiled_call_impl is not None) == options.compile
    return [copy.deepcopy(p.detach()) for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_channels_last_trains_as_the_default_format(name):
    eager = two_steps(name, SpeedOptions())
    nhwc = two_steps(name, SpeedOptions(channels_last=True))
    moved = max((a - b).abs().max().item() for a, b in zip(eager, nhwc))
    assert moved < 1e-10
    assert max((a - c).abs().max().item() for a, c in zip(eager, two_steps(name, SpeedOptions()))) == 0.0


@pytest.mark.parametrize("name", ["vanilla", pytest.param("mtl_io", marks=pytest.mark.slow)])
def test_compiled_forward_trains_as_the_eager_one(name):
    eager = two_steps(name, SpeedOptions())
    compiled = two_steps(name, SpeedOptions(compile=True))
    assert max((a - b).abs().max().item() for a, b in zip(eager, compiled)) < 1e-10


def test_compile_is_refused_for_strategies_that_reuse_one_forward_for_several_backward_passes():
    from functools import partial

    from medmtl.errors import ConfigError
    from medmtl.models.unet_vgg16 import UNetVGG16
    from medmtl.module import MultiTaskModule

    def module(strategy, speed):
        network = partial(UNetVGG16, width=1 / 16)
        return MultiTaskModule(network, strategy, refuge_tasks(), partial(torch.optim.SGD, lr=0.1), speed=speed)

    with pytest.raises(ConfigError, match="speed.compile is refused for PCGrad"):
        module(PCGrad(), {"compile": True})
    module(PCGrad(mode="representation"), {"compile": True})  # its passes start at the representation
    module(PCGrad(), {"channels_last": True})
    module(EqualWeights(), {"compile": True})


def test_speed_options_are_in_the_config_and_left_out_of_a_runs_identity():
    from omegaconf import OmegaConf

    from medmtl.utils.run_identity import config_digest

    fast = compose_train(["speed.channels_last=true", "speed.compile=true"])
    assert SpeedOptions.of(fast.speed) == SpeedOptions(channels_last=True, compile=True)
    assert SpeedOptions.of(compose_train([]).speed) == SpeedOptions()
    run = {"seed": 1, "speed": {"channels_last": False, "compile": False}}
    digest = config_digest(OmegaConf.create(run))
    assert config_digest(OmegaConf.create(run | {"speed": {"channels_last": True, "compile": True}})) == digest
    assert config_digest(OmegaConf.create(run | {"seed": 2})) != digest
    with pytest.raises(TypeError):
        SpeedOptions.of({"channel_last": True})  # a misspelt option is an error, not ignored
