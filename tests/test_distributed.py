"""Data parallelism is exact: for every strategy, R = 2 gloo processes on their local batches end
where one process ends on the union of those batches (medmtl.distributed).

The reference is independent of the reductions: it is the unchanged single-process code on the
union batch, where none of them runs. The ranks must also agree with each other bit for bit in
what they keep (they apply the same reduced update)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.multiprocessing as mp

from distributed_steps import LABELLINGS, RANKS, rank_main, train_every_strategy, train_one
from helpers import options

#: one strategy of each family in the default run; the others in the slow suite
FAMILIES = (
    "vanilla",
    "rlw",
    "uncertainty",
    "dwa",
    "dtp",
    "famo",
    "gradnorm",
    "auto_lambda",
    "pcgrad",
    "mgda_ub",
    "jd_upgrad",
    "jd_nash_mtl",
    "jd_random",
    "jd_modo",
    "db_mtl",
    "graddrop",
    "mtl_io",
    "mao",
    "ga",
    "stl",
    "bayesagg_mtl",
)


def on_two_ranks(out, names):
    """(single-process states, rank states) for ``names``: the two ranks run while this process
    computes the reference."""
    context = mp.start_processes(
        rank_main, args=(str(out / "rendezvous"), str(out), names), nprocs=RANKS, join=False, start_method="spawn"
    )
    reference = train_every_strategy(None, names)
    while not context.join():
        pass
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(RANKS)]
    return reference, ranks


@pytest.fixture(scope="module")
def family_strategies_on_two_ranks(tmp_path_factory):
    return on_two_ranks(tmp_path_factory.mktemp("ranks"), [n for n in options("optim") if n in FAMILIES])


@pytest.fixture(scope="module")
def other_strategies_on_two_ranks(tmp_path_factory):
    return on_two_ranks(tmp_path_factory.mktemp("ranks"), [n for n in options("optim") if n not in FAMILIES])


#: iterative solvers stop at their own tolerance, reached along a path that rounding changes
SOLVER_TOLERANCE = {"jd_nash_mtl": 1e-5}


@pytest.mark.parametrize("labels", LABELLINGS)
@pytest.mark.parametrize(
    "optim_name", [n if n in FAMILIES else pytest.param(n, marks=pytest.mark.slow) for n in options("optim")]
)
def test_two_ranks_take_the_single_process_step_on_the_union_batch(optim_name, labels, request):
    """Three iterations (with the end-of-epoch hook after each); ``partial``: a task labelled on
    one rank only and ranks with different numbers of labelled samples."""
    fixture = "family_strategies_on_two_ranks" if optim_name in FAMILIES else "other_strategies_on_two_ranks"
    reference, ranks = request.getfixturevalue(fixture)
    key = (labels, optim_name)
    single, first, second = reference[key], ranks[0][key], ranks[1][key]
    assert single.keys() == first.keys() == second.keys()
    moved = [k for k in single if k.startswith("model.") and not torch.equal(single[k], initial_weights(optim_name)[k])]
    assert moved, "the reference trained nothing: the comparison would be empty"
    for name in single:
        atol = SOLVER_TOLERANCE.get(optim_name, 1e-9)
        torch.testing.assert_close(first[name], single[name], rtol=1e-7, atol=atol, equal_nan=True, msg=name)
        torch.testing.assert_close(second[name], first[name], rtol=0, atol=0, equal_nan=True, msg=name)


@functools.cache
def initial_weights(optim_name: str) -> dict[str, torch.Tensor]:
    """The network before training: what "moved" is measured from (same construction)."""
    return train_one(optim_name, None, iterations=0)


def test_a_local_loss_is_the_union_value_with_a_gradient_that_averages_to_the_union_gradient():
    """Reducer.global_losses on two simulated ranks by hand: rank A has 3 labelled samples with
    mean loss 2x, rank B 1 with loss 6x; the union's mean is (3 * 2x + 6x) / 4 = 3x and its
    derivative 3; the ranks' derivatives (s_r dL_r: 2 * 3/4 * 2 = 3 and 2 * 1/4 * 6 = 3) average to 3."""
    from medmtl.distributed import Reducer

    class TwoRanks(Reducer):
        def __init__(self, other):
            super().__init__()
            self.world_size, self.other = 2, other

        def _all_reduce(self, tensor, op=None):
            return tensor.detach() + self.other

    x = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    rank_a = {"t": 2 * x}
    other_b = torch.tensor([[1 * 6 * 1.5], [1.0]], dtype=torch.float64)
    (value_a,) = TwoRanks(other_b).global_losses(rank_a, {"t": 3}, ["t"], lambda name: x * 0, x.device).values()
    other_a = torch.tensor([[3 * 2 * 1.5], [3.0]], dtype=torch.float64)
    (value_b,) = TwoRanks(other_a).global_losses({"t": 6 * x}, {"t": 1}, ["t"], lambda name: x * 0, x.device).values()
    assert value_a.item() == pytest.approx(3 * 1.5) and value_b.item() == pytest.approx(3 * 1.5)
    (grad_a,) = torch.autograd.grad(value_a, x)
    (grad_b,) = torch.autograd.grad(value_b, x)
    assert grad_a.item() == pytest.approx(3.0) and grad_b.item() == pytest.approx(3.0)
    assert ((grad_a + grad_b) / 2).item() == pytest.approx(3.0)


# ----- the same equality through Lightning (the module's context, LightningOptimizer, guard) -----


def batch_norm_free_unet(tasks):
    """The tiny U-Net without batch statistics (picklable: the spawned ranks rebuild nothing, they
    receive the module)."""
    from distributed_steps import without_batch_norm
    from medmtl.models.unet_vgg16 import UNetVGG16

    return without_batch_norm(UNetVGG16(tasks, width=1 / 16, dropout=0.0))


def fit_two_iterations(root, optim_name, tmp_path, ranks: int, batch_size: int, iterations: int = 2) -> dict[str, torch.Tensor]:
    """Two iterations of ``trainer.fit``; rank 0's weights (the spawn launcher hands them back)."""
    from hydra.utils import instantiate

    from helpers import compose_train, quiet_trainer
    from medmtl.data.refuge import RefugeDataModule
    from medmtl.lightning_ddp import ExactDDPStrategy
    from medmtl.module import MultiTaskModule

    torch.manual_seed(0)
    cfg = compose_train([f"optim={optim_name}", "optim.optimizer.lr=0.01"])  # steps large against float32 rounding
    datamodule = RefugeDataModule(str(root), image_size=32, batch_size=batch_size, augment=False)
    module = MultiTaskModule(
        model=batch_norm_free_unet,
        strategy=instantiate(cfg.optim.strategy),
        tasks=datamodule.tasks,
        optimizer=instantiate(cfg.optim.optimizer),
    )
    trainer = quiet_trainer(
        tmp_path,
        devices=ranks,
        strategy=ExactDDPStrategy(start_method="spawn") if ranks > 1 else "auto",
        use_distributed_sampler=False,
        max_epochs=1,
        limit_train_batches=iterations,
        limit_val_batches=0,
        precision="64-true",  # Adam turns float32 rounding of near-zero gradients into whole steps
    )
    if iterations:
        trainer.fit(module, datamodule=datamodule)
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.mark.parametrize("optim_name", ["pcgrad", "mtl_io", "ga"])
def test_lightning_on_two_ranks_trains_as_one_process_on_batches_twice_as_large(optim_name, refuge_root, tmp_path):
    """The datamodule's sharded sampler makes the union of the ranks' batch j (4 samples each) the
    one-process batch j of 8: after two iterations through Lightning the weights agree (float64;
    PCGrad's random order is drawn alike on both ranks, MTL-IO steps four optimizers, GA reads its
    per-task streams)."""
    single = fit_two_iterations(refuge_root, optim_name, tmp_path / "one", ranks=1, batch_size=8)
    double = fit_two_iterations(refuge_root, optim_name, tmp_path / "two", ranks=2, batch_size=4)
    initial = fit_two_iterations(refuge_root, optim_name, tmp_path / "none", ranks=1, batch_size=8, iterations=0)
    assert max(float((single[k] - initial[k]).abs().max()) for k in single) > 1e-2, "nothing trained"
    assert single.keys() == double.keys()
    for name, tensor in single.items():
        # trained in float64; the spawn launcher hands rank 0's weights back in the module's float32
        torch.testing.assert_close(double[name].float(), tensor.float(), rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["optim=pcgrad", "optim.strategy.mode=gramian"], "mode=gramian cannot be distributed exactly"),
        (["optim=jd_graddrop", "optim.strategy.mode=representation"], "use mode=jacobian"),
        (["optim=jd_nash_mtl", "optim.strategy.mode=representation"], "use mode=jacobian"),
    ],
)
def test_what_cannot_be_exact_on_several_ranks_is_refused_in_one_sentence(overrides, says):
    from hydra.utils import instantiate

    from helpers import compose_train
    from medmtl.errors import ConfigError

    strategy = instantiate(compose_train(overrides).optim.strategy)
    strategy.setup(["a", "b"])
    strategy.check_distributed(1)  # one process: allowed
    with pytest.raises(ConfigError, match=says):
        strategy.check_distributed(2)
