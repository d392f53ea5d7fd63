"""Iterations of every strategy on the tiny U-Net (BayesAgg-MTL: MultiLeNet, linear heads), on one
process or as one rank of several.

Both the single-process reference and each gloo rank call :func:`train_every_strategy`; the
ranks see their own local batches, the reference the union of them, ordered so that the batch's
halves (MoDo, SDMGrad) are the unions of the ranks' halves. Batch norm is taken out (a network
without batch statistics: a rank's statistics would otherwise be its own batch's).
"""

from __future__ import annotations

import itertools
import os
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn.parameter import is_lazy

from medmtl.catalogue import compose_train, needs_linear_readout, options
from medmtl.data.multimnist import multimnist_tasks
from medmtl.models import build_model
from medmtl.models.multi_lenet import MultiLeNet
from medmtl.models.unet_vgg16 import UNetVGG16
from medmtl.strategies.context import PlainContext
from medmtl.tasks import VALIDATION, refuge_tasks

ITERATIONS = 3
RANKS = 2
LOCAL_BATCH = 2


def without_batch_norm(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
    return model


LABELLINGS = ("full", "partial")


def rank_batch(
    iteration: int, rank: int, stream: str = "train", labels: str = "full", digits: bool = False
) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s local batch of ``iteration`` (float64, 32 px). ``partial``: rank 0 has no
    optic-cup label at all (the task is labelled on the other rank only) and the second sample of
    rank 1 has no glaucoma label, so the ranks' losses average different numbers of samples.
    ``digits``: MultiMNIST's two digits instead (28 px; ``partial``: rank 0 has no right digit,
    rank 1's second sample no left digit)."""
    seed = 1000 * iteration + 10 * rank + (7 if stream != "train" else 0)
    g = torch.Generator().manual_seed(seed)
    n, size = LOCAL_BATCH, 32
    if digits:
        images = torch.rand(n, 1, 28, 28, generator=g, dtype=torch.float64)
        found = {
            "image": images,
            "left": torch.randint(0, 10, (n,), generator=g),
            "right": torch.randint(0, 10, (n,), generator=g),
        }
        partial = {"present/right": torch.tensor([rank == 1] * n), "present/left": torch.tensor([True, rank == 0])}
        return found | (partial if labels == "partial" else {})
    od = (torch.rand(n, size, size, generator=g) > 0.6).double()
    return {
        "image": torch.rand(n, 3, size, size, generator=g, dtype=torch.float64),
        "od": od,
        "oc": od * (torch.rand(n, size, size, generator=g) > 0.5).double(),
        "fovea_heatmap": torch.rand(n, size, size, generator=g, dtype=torch.float64),
        "glaucoma": (torch.rand(n, generator=g) > 0.5).double(),
    } | (partial_labels(rank) if labels == "partial" else {})


def partial_labels(rank: int) -> dict[str, torch.Tensor]:
    return {
        "present/oc": torch.tensor([rank == 1] * LOCAL_BATCH),
        "present/glaucoma": torch.tensor([True, rank == 0]),
    }


def union_batch(iteration: int, stream: str = "train", labels: str = "full", digits: bool = False) -> dict[str, torch.Tensor]:
    """The ranks' batches as one, interleaved: sample i of rank r at position i * R + r, so the
    first half of the union is the union of the ranks' first halves."""
    parts = [rank_batch(iteration, r, stream, labels, digits) for r in range(RANKS)]
    return {k: torch.stack([p[k] for p in parts], dim=1).flatten(0, 1) for k in parts[0]}


def batches(rank: int | None, stream: str = "train", labels: str = "full", digits: bool = False):
    for iteration in itertools.count():
        yield (
            union_batch(iteration, stream, labels, digits)
            if rank is None
            else rank_batch(iteration, rank, stream, labels, digits)
        )


def train_one(optim_name: str, rank: int | None, labels: str = "full", iterations: int = ITERATIONS) -> dict[str, torch.Tensor]:
    """``iterations`` iterations (each followed by the end-of-epoch hook, so that loss histories
    matter); the final parameters and the strategy's state. ``optim_name`` may carry overrides
    after the name (``"ntkmtl_sr optim.strategy.chunks=2"``)."""
    name, *overrides = optim_name.split()
    cfg = compose_train([f"optim={name}", *overrides])
    strategy = instantiate(cfg.optim.strategy)
    digits = needs_linear_readout(name)  # BayesAgg-MTL: MultiLeNet with one linear layer per digit
    tasks = multimnist_tasks() if digits else refuge_tasks()
    strategy.setup([t.name for t in tasks])
    torch.manual_seed(0)
    network = partial(MultiLeNet, dropout="none", head="linear") if digits else partial(UNetVGG16, width=1 / 16, dropout=0.0)
    model = build_model(network, tasks, strategy.separate_networks)
    model = without_batch_norm(model).double()
    strategy.double()
    optimizers = strategy.configure_optimizers(model, instantiate(cfg.optim.optimizer))
    streams = {t.name: batches(rank, labels=labels, digits=digits) for t in tasks}
    streams[VALIDATION] = batches(rank, "validation", labels, digits)
    ctx = PlainContext(model, tasks, optimizers, clip_norm=cfg.optim.get("gradient_clip_val"), task_batches=streams)
    strategy.check_distributed(ctx.world_size)
    torch.manual_seed(1)  # the strategies' own draws (random weights, GA's balanced sampler)
    for iteration, batch in zip(range(iterations), batches(rank, labels=labels, digits=digits)):
        strategy.training_step(ctx, batch)
        strategy.on_train_epoch_end(iteration)
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    ready = {
        k: v for k, v in strategy.state_dict().items() if isinstance(v, torch.Tensor) and not is_lazy(v)
    }  # LDC-MTL's router before its first step
    return state | {f"strategy.{k}": v.detach().clone() for k, v in ready.items()}


def train_every_strategy(rank: int | None, names: list[str] | None = None) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """(labelling, strategy) -> final state, for both labellings."""
    return {(labels, name): train_one(name, rank, labels) for labels in LABELLINGS for name in names or options("optim")}


def rank_main(rank: int, rendezvous: str, out: str, names: list[str] | None) -> None:
    """One gloo rank: every strategy's iterations on this rank's batches, saved to ``out``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=RANKS)
    try:
        torch.save(train_every_strategy(rank, names), Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()
