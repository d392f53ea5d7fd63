"""Distributed evaluation is exact for every dataset's evaluator: the split's batches shared
between two evaluators (two ranks' shards), their accumulated states gathered and merged
(medmtl.metrics.gather), give the metrics one evaluator computes over every batch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train
from medmtl.metrics.gather import accumulated_state, gather_evaluator
from medmtl.run import build_module

EXPERIMENTS = ["quickstart", "idrid_table1", "nyudv2_survey_table5", "emotic_table2", "medmnist_umedpt"]


class TwoRanks:
    """A reducer whose gather returns the two evaluators' states, as pickled copies (what
    ``all_gather_object`` hands back)."""

    distributed = True

    def __init__(self, evaluators):
        self.evaluators = evaluators

    def gather_objects(self, value):
        return [copy.deepcopy(accumulated_state(e)) for e in self.evaluators]


def batches(datamodule):
    """The test split's batches (the protocols of IDRiD and NYUDv2 keep no validation split)."""
    loaders = datamodule.test_dataloader()
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        yield from loader


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_two_shards_merged_give_the_metrics_of_the_whole_split(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", "preset=tiny", f"data.root={tmp_path / 'data'}", "data.eval_batch_size=2"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    torch.manual_seed(0)
    module = build_module(cfg, datamodule).eval()
    whole, shards = datamodule.make_evaluator(), [datamodule.make_evaluator(), datamodule.make_evaluator()]
    count = 0
    with torch.no_grad():
        for count, batch in enumerate(batches(datamodule), start=1):
            labelled = [t.name for t in datamodule.tasks if t.target_key in batch]
            outputs = module.model(*module.inputs(batch), tasks=labelled)
            whole.update(outputs, batch)
            shards[count % 2].update(outputs, batch)
    assert count >= 3, "too few batches to share"
    gather_evaluator(shards[0], TwoRanks(shards))
    expected, merged = whole.compute(), shards[0].compute()
    assert expected and merged.keys() == expected.keys()
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(merged[name]), name
        else:
            assert merged[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_an_evaluator_declares_everything_its_reset_creates(experiment, tmp_path):
    """What ``reset`` assigns anew is what the ranks must merge: it must be in ``accumulated``."""
    cfg = compose_train([f"experiment={experiment}", "preset=tiny", f"data.root={tmp_path / 'data'}"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    evaluator = datamodule.make_evaluator()
    before = {name: id(value) for name, value in vars(evaluator).items()}
    evaluator.reset()
    renewed = {name for name, value in vars(evaluator).items() if id(value) != before.get(name)}
    assert renewed <= set(evaluator.accumulated)
