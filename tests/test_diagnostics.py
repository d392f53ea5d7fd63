"""Task-balance diagnostics (Hervella et al. 2024 Figs. 4-5) against direct computations."""

import csv
from functools import partial

import lightning as L
import pytest
import torch

from helpers import PlainContext, random_batch, tiny_unet
from medmtl.data.refuge import RefugeDataModule
from medmtl.diagnostics import TaskBalanceDiagnostics, effective_lr, layers_of
from medmtl.models.unet_vgg16 import UNetVGG16
from medmtl.module import MultiTaskModule
from medmtl.strategies import EqualWeights, MultiAdaptive, MultiAdaptiveOptimization
from medmtl.tasks import refuge_tasks


def test_adam_effective_rate_is_lr_over_root_v_hat():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.Adam([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    p.grad = torch.tensor([0.5, 2.0])
    optimizer.step()
    v_hat = torch.tensor([0.25, 4.0])  # after one step v_hat = g^2
    torch.testing.assert_close(effective_lr(optimizer, p, "any"), 0.1 / (v_hat.sqrt() + 1e-8))


def test_mao_effective_rate_uses_each_task_own_moment():
    model = tiny_unet()
    optimizer = MultiAdaptive(model.parameters(), lr=0.01)
    MultiAdaptiveOptimization().training_step(PlainContext(model, refuge_tasks(), [optimizer]), random_batch(0))
    p = model.encoder.levels[0][0].weight
    for task in ("od", "glaucoma"):
        v = optimizer.state[p][task]["v"]
        # one step, standard correction: c_1 (1 - b1) = sqrt(1 - b2)
        expected = 0.01 * (1 - 0.999) ** 0.5 / (v + 1e-8).sqrt()
        torch.testing.assert_close(effective_lr(optimizer, p, task), expected)
    assert effective_lr(optimizer, model.dense_heads["od"].weight, "glaucoma") == 0.0


def test_callback_writes_per_layer_per_task_rows(refuge_root, tmp_path):
    dm = RefugeDataModule(str(refuge_root), image_size=32, batch_size=4, augment=False)
    module = MultiTaskModule(
        model=partial(UNetVGG16, width=1 / 16, dropout=0.0),
        strategy=EqualWeights(),
        tasks=dm.tasks,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[TaskBalanceDiagnostics(every_n_iterations=2)],
    )
    trainer.fit(module, datamodule=dm)
    rows = list(csv.DictReader((tmp_path / "diagnostics.csv").open()))
    layers = layers_of(module.model)
    assert {int(r["iteration"]) for r in rows} == {0, 2}
    assert len(rows) == 2 * len(layers) * 4
    by_key = {(r["iteration"], r["layer"], r["task"]): r for r in rows}
    # the classification task never reaches the decoder: zero gradient and zero contribution there
    decoder_layer = next(name for name in layers if name.startswith("decoder."))
    assert float(by_key[("0", decoder_layer, "glaucoma")]["grad"]) == 0.0
    assert float(by_key[("0", decoder_layer, "od")]["grad"]) > 0.0
    assert all(float(r["contribution"]) >= 0 for r in rows)


def test_task_balance_plots_are_written(tmp_path):
    import pandas as pd

    from medmtl.analysis.task_balance import plot_per_layer, plot_per_step, read_diagnostics

    rows = [
        (it, layer, task, 1e-3 * (i + 1), 1e-5 * (j + 1))
        for it in (0, 50)
        for i, layer in enumerate(["encoder.a", "encoder.b", "decoder.c"])
        for j, task in enumerate(["od", "glaucoma"])
    ]
    pd.DataFrame(rows, columns=["iteration", "layer", "task", "grad", "contribution"]).to_csv(tmp_path / "d.csv", index=False)
    frame = read_diagnostics(tmp_path / "d.csv")
    for path in (plot_per_layer(frame, tmp_path / "layers.png"), plot_per_step(frame, tmp_path / "steps.png", "encoder")):
        assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="No layer"):
        plot_per_step(frame, tmp_path / "x.png", "head")
