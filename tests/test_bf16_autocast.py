"""Every strategy trains under bf16 autocast (what ``trainer.precision=bf16-mixed`` does), on the
CPU as on a GPU: two steps of the tiny U-Net stay finite and move the weights. A strategy whose
own maths reaches a bf16 tensor where it cannot take one (Nash-MTL's hand-over to numpy did, found
on an H200) fails here without a GPU."""

import itertools
from functools import partial

import pytest
import torch
from hydra.utils import instantiate

from helpers import random_batch, random_digits_batch
from medmtl.catalogue import compose_train, needs_linear_readout, strategy_names
from medmtl.data.multimnist import multimnist_tasks
from medmtl.models import build_model
from medmtl.models.multi_lenet import MultiLeNet
from medmtl.models.unet_vgg16 import UNetVGG16
from medmtl.strategies.context import PlainContext
from medmtl.tasks import VALIDATION, refuge_tasks


@pytest.mark.parametrize("name", strategy_names())
def test_two_bf16_autocast_steps_stay_finite_and_move_the_weights(name):
    readout = needs_linear_readout(name)  # BayesAgg-MTL: MultiLeNet with linear heads, past its warm-up epoch
    tasks = multimnist_tasks() if readout else refuge_tasks()
    cfg = compose_train([f"optim={name}"])
    strategy = instantiate(cfg.optim.strategy)
    strategy.setup([t.name for t in tasks])
    torch.manual_seed(0)
    network = partial(MultiLeNet, dropout="none", head="linear") if readout else partial(UNetVGG16, width=1 / 16, dropout=0.0)
    model = build_model(network, tasks, strategy.separate_networks)
    optimizers = strategy.configure_optimizers(model, instantiate(cfg.optim.optimizer))
    batch = random_digits_batch() if readout else random_batch(0, dtype=torch.float32)
    streams = {t.name: itertools.repeat(batch) for t in tasks} | {VALIDATION: itertools.repeat(batch)}
    ctx = PlainContext(model, tasks, optimizers, task_batches=streams)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            strategy.training_step(ctx, batch)
        if readout:
            strategy.on_train_epoch_end(0)
    assert all(torch.isfinite(p).all() for p in model.parameters()), "a non-finite value reached the weights"
    assert max((p.detach() - q).abs().max().item() for p, q in zip(model.parameters(), before)) > 0
