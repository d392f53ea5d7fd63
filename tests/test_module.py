"""The LightningModule with real Trainer runs: counters, checkpoints, precision guard, W&B mode."""

from functools import partial

import lightning as L
import pytest
import torch

from medmtl.api import MultiTaskStep
from medmtl.data.refuge import RefugeDataModule
from medmtl.models.unet_vgg16 import UNetVGG16
from medmtl.module import MultiTaskModule, check_precision
from medmtl.strategies import EqualWeights, GradNorm, IndependentOptimizers, MultiAdaptiveOptimization, PCGrad
from medmtl.utils import wandb_logger


def make(root, strategy, **trainer_kwargs):
    dm = RefugeDataModule(str(root), image_size=32, batch_size=4, augment=False)
    module = MultiTaskModule(
        model=partial(UNetVGG16, width=1 / 16, dropout=0.0),
        strategy=strategy,
        tasks=dm.tasks,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    return dm, module, trainer


def test_global_step_counts_optimizer_steps_but_iterations_count_batches(refuge_root):
    torch.manual_seed(0)
    dm, module, trainer = make(refuge_root, IndependentOptimizers(), max_epochs=1, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    batches = len(dm.train_dataloader())
    assert module.iterations == batches
    assert trainer.global_step == 4 * batches  # one Adam step per task per mini-batch


def test_every_training_iteration_goes_through_the_apis_step(refuge_root, monkeypatch):
    """One code path: the module's training step is medmtl.api.MultiTaskStep's, whose iteration and
    epoch counters are the module's (the own-loop API and the framework cannot drift apart)."""
    calls = []
    original = MultiTaskStep.__call__

    def counted(self, batch):
        calls.append((self.iteration, self.epoch))
        return original(self, batch)

    monkeypatch.setattr(MultiTaskStep, "__call__", counted)
    dm, module, trainer = make(refuge_root, EqualWeights(), max_epochs=2, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    batches = len(dm.train_dataloader())
    assert calls == [(i, i // batches) for i in range(2 * batches)]
    assert module.iterations == module.step.iteration == 2 * batches


def test_checkpoint_restores_every_task_optimizer(refuge_root, tmp_path):
    torch.manual_seed(0)
    dm, module, trainer = make(refuge_root, IndependentOptimizers(), max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "round_trip.ckpt"
    trainer.save_checkpoint(path)
    saved = [opt.state_dict() for opt in module.optimizer_list()]

    dm2, restored, trainer2 = make(refuge_root, IndependentOptimizers(), max_epochs=1, default_root_dir=tmp_path)
    trainer2.fit(restored, datamodule=dm2, ckpt_path=path)  # max_epochs reached: restores, trains nothing
    assert restored.iterations == module.iterations
    loaded = [opt.state_dict() for opt in restored.optimizer_list()]
    assert len(loaded) == 4
    for before, after in zip(saved, loaded):
        assert before["state"].keys() == after["state"].keys()
        for key in before["state"]:
            torch.testing.assert_close(before["state"][key]["exp_avg"], after["state"][key]["exp_avg"])
            torch.testing.assert_close(before["state"][key]["exp_avg_sq"], after["state"][key]["exp_avg_sq"])
    for a, b in zip(module.parameters(), restored.parameters()):
        torch.testing.assert_close(a, b)


def test_fp16_scaler_is_refused_for_multi_step_strategies():
    # (on a CPU Lightning itself turns 16-mixed into bf16-mixed, so the guard is tested directly)
    with pytest.raises(ValueError, match="bf16-mixed"):
        check_precision("16-mixed", IndependentOptimizers())
    check_precision("16-mixed", EqualWeights())
    for strategy in (PCGrad(), GradNorm(), MultiAdaptiveOptimization()):
        with pytest.raises(ValueError, match="bf16-mixed"):
            check_precision("16-mixed", strategy)
    check_precision("bf16-mixed", IndependentOptimizers())


def test_vanilla_trains_with_bf16(refuge_root):
    dm, module, trainer = make(
        refuge_root, EqualWeights(), max_steps=2, precision="bf16-mixed", enable_checkpointing=False, limit_val_batches=0
    )
    trainer.fit(module, datamodule=dm)
    assert module.iterations == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_wandb_mode_never_prompts_and_never_waits_on_an_unreachable_server(monkeypatch, tmp_path):
    """Only loopback addresses: a listening socket stands for a reachable server, a closed port for
    an unreachable one (no traffic leaves the machine)."""
    import socket

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_logger.resolve_mode("auto") == "offline"
    assert wandb_logger.resolve_mode("online") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with socket.create_server(("127.0.0.1", 0)) as server:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert wandb_logger.resolve_mode("auto") == "online"
        closed = socket.create_server(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port}")
    assert wandb_logger.resolve_mode("auto", tmp_path, connect_timeout=1) == "offline"
    assert wandb_logger.resolve_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="mode"):
        wandb_logger.resolve_mode("sometimes")


def test_gradient_clipping_is_refused_where_the_update_ignores_grad():
    from medmtl.tasks import refuge_tasks as tasks

    with pytest.raises(ValueError, match="gradient_clip_val=null"):
        MultiTaskModule(
            model=partial(UNetVGG16, width=1 / 16),
            strategy=MultiAdaptiveOptimization(),
            tasks=tasks(),
            optimizer=partial(torch.optim.Adam, lr=1e-3),
            gradient_clip_val=1.0,
        )


def test_gradient_clipping_bounds_the_update_norm():
    from helpers import PlainContext, random_batch, tiny_unet
    from medmtl.tasks import refuge_tasks

    model = tiny_unet()
    strategy = EqualWeights()
    (optimizer,) = strategy.configure_optimizers(model, lambda p: torch.optim.SGD(p, lr=0.0))
    strategy.training_step(PlainContext(model, refuge_tasks(), [optimizer], clip_norm=1e-3), random_batch(0))
    total = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None))
    assert total.item() == pytest.approx(1e-3, rel=1e-4)


def test_epoch_means_weight_each_step_by_its_batch_size_and_start_over_each_epoch():
    from medmtl.epoch_means import EpochMeans

    means = EpochMeans()
    means.add({"loss/od": torch.tensor(1.0), "weight/od": 0.5}, batch_size=4)
    means.add({"loss/od": torch.tensor(4.0)}, batch_size=2)
    first = means.pop()
    assert first["loss/od"].item() == pytest.approx((1.0 * 4 + 4.0 * 2) / 6)  # Lightning's epoch reduction
    assert first["weight/od"].item() == pytest.approx(0.5)
    assert means.pop() == {}
