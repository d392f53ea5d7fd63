"""Architectures. Every model goes through :func:`build_model`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medmtl.models.base import MultiTaskNet, SeparateNetworks
from medmtl.tasks import Task

ModelFactory = Callable[..., MultiTaskNet]


def build_model(factory: ModelFactory, tasks: Sequence[Task], separate_networks: bool = False) -> MultiTaskNet:
    """Build one multi-task network, or one network per task when ``separate_networks``.

    Args:
        factory: the architecture's constructor with its options bound (a Hydra ``_partial_``);
            it is called as ``factory(tasks=...)``.
        tasks: the task set of the dataset.
        separate_networks: single-task learning: each task gets the same architecture built for
            that task alone.
    """
    if separate_networks:
        return SeparateNetworks({t.name: factory(tasks=[t]) for t in tasks})
    return factory(tasks=list(tasks))


def count_parameters(model: MultiTaskNet) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(model: MultiTaskNet, inputs: Sequence[torch.Tensor], tasks: Sequence[str] | None = None) -> int:
    """Floating-point operations of one forward of ``tasks`` (all by default) on ONE sample (the
    first of each input), counted by ``torch.utils.flop_counter`` (a multiply-add counts 2), in
    eval mode and without gradients; the survey's Table V reports these per network."""
    from torch.utils.flop_counter import FlopCounterMode

    training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*(x[:1] for x in inputs), tasks=tasks)
    finally:
        model.train(training)
    return int(counter.get_total_flops())


__all__ = ["MultiTaskNet", "SeparateNetworks", "build_model", "count_parameters", "flops_per_sample"]
