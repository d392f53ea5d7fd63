"""Every ``optim=<name>`` trains the U-Net on the synthetic REFUGE through Lightning, and its
whole state (model, optimizers, strategy) survives a checkpoint round trip. A strategy that needs
one linear head per task on a shared vector (BayesAgg-MTL) trains MultiLeNet with linear heads on
the synthetic MultiMNIST instead."""

import copy
from functools import partial

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train, options, quiet_trainer
from medmtl.catalogue import needs_linear_readout
from medmtl.data.multimnist_synthetic import SyntheticMultiMNISTDataModule
from medmtl.data.refuge import RefugeDataModule
from medmtl.models.multi_lenet import MultiLeNet
from medmtl.models.unet_vgg16 import UNetVGG16
from medmtl.module import MultiTaskModule


def build(root, optim_name):
    cfg = compose_train([f"optim={optim_name}"])
    if needs_linear_readout(optim_name):
        dm = SyntheticMultiMNISTDataModule(
            str(root.parent / "mnist"), synthetic={"n_train": 40, "n_test": 8}, batch_size=4, cache_dir=str(root.parent / "cache")
        )
        network = partial(MultiLeNet, dropout="none", head="linear")
    else:
        dm = RefugeDataModule(str(root), image_size=32, batch_size=4, augment=False)
        network = partial(UNetVGG16, width=1 / 16, dropout=0.0)
    module = MultiTaskModule(
        model=network,
        strategy=instantiate(cfg.optim.strategy),
        tasks=dm.tasks,
        optimizer=instantiate(cfg.optim.optimizer),
    )
    return dm, module


def fit(root, optim_name, tmp_path, epochs, ckpt_path=None):
    torch.manual_seed(0)
    dm, module = build(root, optim_name)
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module, trainer


def flat_state(module):
    """The state dict, copied; a strategy's extra state may be a container of tensors (FAMO's
    logit optimizer)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("optim_name", options("optim"))
def test_strategy_trains_and_resumes_its_state(optim_name, refuge_root, tmp_path):
    module, trainer = fit(refuge_root, optim_name, tmp_path, epochs=2)
    assert module.iterations == 4
    assert all(torch.isfinite(p).all() for p in module.parameters())
    path = tmp_path / "state.ckpt"
    trainer.save_checkpoint(path)

    restored, _ = fit(refuge_root, optim_name, tmp_path, epochs=2, ckpt_path=path)  # restores, trains nothing
    assert restored.iterations == module.iterations
    before, after = flat_state(module), flat_state(restored)
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(before[key], after[key], equal_nan=True, msg=key)
    saved = [o.state_dict()["state"] for o in module.optimizer_list()]
    loaded = [o.state_dict()["state"] for o in restored.optimizer_list()]
    assert len(saved) == len(loaded)
    torch.testing.assert_close(saved, loaded, equal_nan=True)


@pytest.mark.parametrize("optim_name", options("optim"))
def test_absent_tasks_contribute_nothing_and_break_nothing(optim_name):
    import itertools

    from helpers import PlainContext, random_batch, random_digits_batch
    from medmtl.data.multimnist import multimnist_tasks
    from medmtl.models import build_model
    from medmtl.tasks import VALIDATION, refuge_tasks

    # MAO (Algorithm 1, step_counter=global) decays every parameter at every step, labelled or not:
    # the decay is not the absent task's contribution, so it is switched off here
    extra = ["optim.optimizer.weight_decay=0"] if optim_name == "mao" else []
    cfg = compose_train([f"optim={optim_name}", *extra])
    strategy = instantiate(cfg.optim.strategy)
    readout = needs_linear_readout(optim_name)  # BayesAgg-MTL: MultiLeNet with linear heads, the right digit absent
    tasks = multimnist_tasks() if readout else refuge_tasks()
    strategy.setup([t.name for t in tasks])
    torch.manual_seed(0)
    network = partial(MultiLeNet, dropout="none", head="linear") if readout else partial(UNetVGG16, width=1 / 16, dropout=0.0)
    model = build_model(network, tasks, strategy.separate_networks).double()
    strategy.double()
    optimizers = strategy.configure_optimizers(model, instantiate(cfg.optim.optimizer))
    if readout:
        digits = random_digits_batch(3, n=2, dtype=torch.float64)
        batch, missing, gone = digits | {"present/right": torch.tensor([False, False])}, "right", ["loss/right"]
    else:
        absent = {"present/oc": torch.tensor([False, False]), "present/glaucoma": torch.tensor([False, False])}
        batch, missing, gone = random_batch(3) | absent, "oc", ["loss/oc", "loss/glaucoma"]
    oc_head = [p.detach().clone() for p in model.head_parameters(missing)]
    ctx = PlainContext(
        model,
        tasks,
        optimizers,
        task_batches={t.name: itertools.repeat(batch) for t in tasks} | {VALIDATION: itertools.repeat(batch)},
    )
    for epoch in range(2):
        logged = strategy.training_step(ctx, batch)
        if readout:  # past BayesAgg-MTL's warm-up epoch
            strategy.on_train_epoch_end(epoch)
    assert not set(gone) & set(logged)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(oc_head, model.head_parameters(missing))), "an absent task's head moved"
    assert all(torch.isfinite(v).all() for v in logged.values())
