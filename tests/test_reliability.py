"""Nothing lost, no one in: each protection of issue 11 with a test that fails without it.

Untrusted checkpoints, non-finite values, exit codes and failure records, reused and locked
folders, content-keyed caches, concurrent synthetic generation, evaluation from a run's own
configuration. The catalogue of malformed dataset files is in ``test_bad_input.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from helpers import SMALL_SPEC, TINY, PlainContext, quiet_trainer, random_batch, run, tiny_unet
from medmtl.checkpoints import check_fits, read_checkpoint
from medmtl.data.refuge import RefugeDataModule
from medmtl.entry import read_failure, run_job
from medmtl.errors import CheckpointError, ConfigError, DatasetError, NonFiniteError, RunFolderConflict, find_user_error
from medmtl.models.unet_vgg16 import UNetVGG16
from medmtl.module import MultiTaskModule
from medmtl.nonfinite import NonFiniteGuard
from medmtl.strategies import EqualWeights, IndependentOptimizers
from medmtl.tasks import refuge_tasks
from medmtl.utils import folder_lock


# ----- checkpoints are data ------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"Refusing to load .*crafted.ckpt: it holds posix.system"):
        read_checkpoint(path)
    assert not marker.exists(), "the checkpoint's code ran"


def test_a_checkpoint_resumes_only_the_strategy_that_wrote_it(tmp_path):
    """Train 1 epoch with vanilla, resume its last.ckpt with MTL-IO (four Adam optimizers where the
    file holds one): one sentence naming both strategies, exit 2, before any training (without the
    check, torch's optimizer loading raised a ValueError traceback). Resuming with the same strategy
    is what the exact-resume tests do."""
    first = run("train.py", [*TINY, "optim=vanilla", f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["medmtl_strategy"] == "vanilla"
    other = run(
        "train.py",
        [*TINY, "optim=mtl_io", f"ckpt_path={last}", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'b'}"],
        tmp_path,
    )
    assert other.returncode == 2
    assert "was written by optim=vanilla and this run trains optim=mtl_io" in other.stderr
    assert "Traceback" not in other.stderr
    assert read_failure(tmp_path / "b")["message"].startswith(str(last))


def test_truncated_foreign_and_mismatched_checkpoints_are_one_sentence_each(tmp_path):
    model = tiny_unet(dtype=torch.float32)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": state}, good)
    assert check_fits(good, state)["state_dict"].keys() == state.keys()

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"Cannot read checkpoint .*truncated.ckpt: it is truncated"):
        check_fits(truncated, state)

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign.ckpt is not a checkpoint of this project"):
        check_fits(foreign, state)

    wider = {f"model.{k}": v for k, v in UNetVGG16(refuge_tasks(), width=1 / 8).state_dict().items()}
    with pytest.raises(CheckpointError, match=r"good.ckpt does not fit this model: .* of another shape"):
        check_fits(good, wider)
    with pytest.raises(CheckpointError, match=r"Checkpoint not found"):
        check_fits(tmp_path / "absent.ckpt", state)


def test_every_checkpoint_the_trainer_writes_loads_as_data_only(refuge_root, tmp_path):
    """The project's own checkpoints (optimizer, scheduler, loop, callback and random states) pass
    ``weights_only=True``; they are written atomically (no temporary file is left)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from medmtl.checkpoints import AtomicCheckpointIO

    dm = RefugeDataModule(str(refuge_root), image_size=32, batch_size=4, augment=False)
    module = MultiTaskModule(
        model=partial(UNetVGG16, width=1 / 16),
        strategy=IndependentOptimizers(),
        tasks=dm.tasks,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1, plugins=[AtomicCheckpointIO()])
    trainer.callbacks.append(ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last"))
    trainer.fit(module, datamodule=dm)
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert {"state_dict", "optimizer_states", "lr_schedulers", "medmtl_rng_states"} <= set(checkpoint)
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))


# ----- non-finite values ---------------------------------------------------------------------------
def _one_iteration(strategy, guard, batch, lr=1e-3):
    model = tiny_unet()
    optimizers = strategy.configure_optimizers(model, lambda p: torch.optim.Adam(p, lr=lr))
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers() if b.is_floating_point()]
    guard.begin_iteration(7, 2, model)
    strategy.training_step(PlainContext(model, refuge_tasks(), optimizers, guard=guard), batch)
    return model, before, buffers


def test_stop_names_the_task_the_iteration_and_the_learning_rate_before_that_update():
    """MTL-IO steps task by task: the three finite updates apply, the fovea's is refused before it
    changes its head (a NaN target makes only the fovea loss NaN)."""
    batch = random_batch(0)
    batch["fovea_heatmap"][0, 0, 0] = float("nan")
    model, strategy = tiny_unet(), IndependentOptimizers()
    optimizers = strategy.configure_optimizers(model, lambda p: torch.optim.Adam(p, lr=1e-3))
    fovea_head = [p.detach().clone() for p in model.head_parameters("fovea")]
    guard = NonFiniteGuard("stop")
    guard.begin_iteration(7, 2, model)
    with pytest.raises(
        NonFiniteError,
        match=r"iteration 7 \(epoch 2\): the loss of task 'fovea' is NaN or infinite, "
        r"at learning rate 0.001",
    ):
        strategy.training_step(PlainContext(model, refuge_tasks(), optimizers, guard=guard), batch)
    assert all(torch.equal(was, now) for was, now in zip(fovea_head, model.head_parameters("fovea"), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_stop_names_a_non_finite_gradient_when_every_loss_is_finite():
    model = tiny_unet()
    strategy = EqualWeights()
    (optimizer,) = strategy.configure_optimizers(model, lambda p: torch.optim.Adam(p, lr=1e-3))
    model.classifiers["glaucoma"][1].weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    before = [p.detach().clone() for p in model.parameters()]
    guard = NonFiniteGuard("stop")
    guard.begin_iteration(0, 0, model)
    with pytest.raises(NonFiniteError, match=r"the gradient of the update from 'glaucoma', 'od', 'oc', 'fovea' \(learning rate"):
        strategy.training_step(PlainContext(model, refuge_tasks(), [optimizer], guard=guard), random_batch(0))
    assert all(torch.equal(was, now) for was, now in zip(before, model.parameters(), strict=True))


def test_a_finite_iteration_passes_and_off_checks_nothing():
    guard = NonFiniteGuard("stop")
    _one_iteration(EqualWeights(), guard, random_batch(0))
    guard.end_iteration([1e-3])
    bad = random_batch(0)
    bad["od"][0, 0, 0] = float("nan")
    off = NonFiniteGuard("off")
    _one_iteration(EqualWeights(), off, bad)
    off.end_iteration([1e-3])


def test_skip_drops_the_update_restores_the_buffers_and_stops_after_consecutive_skips():
    bad = random_batch(0)
    bad["image"][0, 0, 0, 0] = float("nan")  # NaN activations: the batch-norm statistics see them
    guard = NonFiniteGuard("skip", max_consecutive_skips=2)
    model, before, buffers = _one_iteration(EqualWeights(), guard, bad)
    guard.end_iteration([1e-3])
    assert guard.skipped_updates == 1
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q), "a skipped update moved a weight"
    after = [b for b in model.buffers() if b.is_floating_point()]
    assert all(torch.equal(a, b) for a, b in zip(after, buffers)), "the batch-norm statistics kept the NaN batch"
    assert all(p.grad is None for p in model.parameters())
    guard.begin_iteration(8, 2, model)
    strategy = EqualWeights()
    optimizers = strategy.configure_optimizers(model, lambda p: torch.optim.Adam(p))
    strategy.training_step(PlainContext(model, refuge_tasks(), optimizers, guard=guard), bad)
    with pytest.raises(NonFiniteError, match=r"2 iterations in a row .* \(2 updates skipped in all\)"):
        guard.end_iteration([1e-3])


def test_a_finite_iteration_resets_the_consecutive_count():
    guard = NonFiniteGuard("skip", max_consecutive_skips=2)
    bad = random_batch(0)
    bad["image"][0, 0, 0, 0] = float("nan")
    for batch in (bad, random_batch(1), bad):
        _one_iteration(EqualWeights(), guard, batch)
        guard.end_iteration([1e-3])
    assert guard.skipped_updates == 2 and guard.consecutive == 1


def test_mao_per_task_gradients_are_checked_too():
    from medmtl.strategies import MultiAdaptive, MultiAdaptiveOptimization

    model = tiny_unet()
    strategy = MultiAdaptiveOptimization()
    (optimizer,) = strategy.configure_optimizers(model, lambda p: MultiAdaptive(p, lr=1e-3))
    model.classifiers["glaucoma"][1].weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    guard = NonFiniteGuard("skip")
    before = [p.detach().clone() for p in model.parameters()]
    guard.begin_iteration(0, 0, model)
    strategy.training_step(PlainContext(model, refuge_tasks(), [optimizer], guard=guard), random_batch(0))
    guard.end_iteration([1e-3])
    assert guard.skipped_updates == 1 and optimizer.task_gradients == {}
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_no_checkpoint_with_a_non_finite_weight_and_no_nan_for_the_evaluators(refuge_root, tmp_path):
    dm = RefugeDataModule(str(refuge_root), image_size=32, batch_size=4, augment=False)
    module = MultiTaskModule(
        model=partial(UNetVGG16, width=1 / 16),
        strategy=EqualWeights(),
        tasks=dm.tasks,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
    )
    with torch.no_grad():
        module.model.encoder.levels[0][0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"Not writing a checkpoint .* weight 'model.encoder.levels.0.0.weight'"):
        module.on_save_checkpoint({"state_dict": module.state_dict()})
    trainer = quiet_trainer(tmp_path)
    with pytest.raises(NonFiniteError, match=r"The network's val output for task '.*' is NaN or infinite"):
        trainer.validate(module, datamodule=dm, verbose=False)


# ----- one sentence, an exit code and a failure record ---------------------------------------------
def test_user_errors_are_found_through_hydra_and_dataloader_wrappers():
    inner = DatasetError("Spreadsheet x.xlsx, row 3, column Fovea_X: the value is empty.")
    try:
        try:
            raise inner
        except DatasetError as error:
            raise InstantiationException("Error in call to target 'medmtl.data.refuge.RefugeDataModule'") from error
    except InstantiationException as wrapped:
        assert find_user_error(wrapped) is inner
    argument = InstantiationException("Error in call to target 'X':\nTypeError(\"got an unexpected keyword argument 'fold'\")")
    argument.__cause__ = TypeError("__init__() got an unexpected keyword argument 'fold'")
    found = find_user_error(argument)
    assert isinstance(found, ConfigError)
    # the cause, not a bare colon
    assert str(found) == "Error in call to target 'X': __init__() got an unexpected keyword argument 'fold'"
    assert find_user_error(RuntimeError("a bug")) is None

    from medmtl.errors import one_sentence

    worker = DatasetError(
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1\nmedmtl.errors.DatasetError: Cannot decode image a.jpg: truncated.\n'
    )
    assert one_sentence(worker) == "Cannot decode image a.jpg: truncated."


def test_run_job_records_the_failure_and_exits_with_its_code(tmp_path, capsys):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})

    def diverge(_):
        raise NonFiniteError("Training stopped at iteration 3 (epoch 0): the loss of task 'od' is NaN.")

    with pytest.raises(SystemExit) as stopped:
        run_job(diverge, cfg, in_sweep=False)
    assert stopped.value.code == 3
    assert capsys.readouterr().err.strip() == "error: Training stopped at iteration 3 (epoch 0): the loss of task 'od' is NaN."
    assert read_failure(tmp_path)["kind"] == "non-finite values" and read_failure(tmp_path)["exit_code"] == 3
    # in a sweep the job returns, so that the other jobs run; a rerun that succeeds removes the record
    assert run_job(diverge, cfg, in_sweep=True) is None
    assert run_job(lambda _: {"test": {}}, cfg, in_sweep=False) == {"test": {}}
    assert read_failure(tmp_path) is None

    def bug(_):
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_job(bug, cfg, in_sweep=False)
    assert read_failure(tmp_path)["kind"] == "crash"


def test_another_ranks_failure_is_handed_to_rank_0_which_reports_it_once(tmp_path, capsys, monkeypatch):
    """Under DDP a rank other than 0 that meets bad data writes failure.rank<r>.json and ends quietly
    with the error's code; rank 0, which then sees only the broken connection, records and prints
    that rank's sentence (it printed "gloo: connection closed" while the cause was in rank 1's
    traceback). A crash of another rank is recorded too and keeps its traceback."""
    from omegaconf import OmegaConf

    import medmtl.lightning_ddp

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "trainer": {"devices": 2, "num_nodes": 1}})

    def bad_shard(_):
        raise DatasetError("Cannot decode image test/0007.jpg: truncated.")

    monkeypatch.setattr(medmtl.lightning_ddp, "is_primary_process", lambda: False)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as stopped:
        run_job(bad_shard, cfg, in_sweep=False)
    assert stopped.value.code == 2 and capsys.readouterr().err == ""
    handed = json.loads((tmp_path / "failure.rank1.json").read_text())
    assert handed == {"rank": 1, "kind": "data error", "message": "Cannot decode image test/0007.jpg: truncated.", "exit_code": 2}

    def connection_closed(_):
        (tmp_path / "failure.rank1.json").write_text(json.dumps(handed))  # rank 1 wrote it during the run
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    monkeypatch.setattr(medmtl.lightning_ddp, "is_primary_process", lambda: True)
    with pytest.raises(SystemExit) as stopped:
        run_job(connection_closed, cfg, in_sweep=False)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == "error: rank 1: Cannot decode image test/0007.jpg: truncated."
    assert read_failure(tmp_path)["message"] == "rank 1: Cannot decode image test/0007.jpg: truncated."

    def rank_bug(_):
        raise KeyError("a bug keeps its traceback")

    monkeypatch.setattr(medmtl.lightning_ddp, "is_primary_process", lambda: False)
    with pytest.raises(KeyError):
        run_job(rank_bug, cfg, in_sweep=False)
    assert json.loads((tmp_path / "failure.rank1.json").read_text())["kind"] == "crash"

    # a single-process crash does not wait for, nor take, another rank's record
    single = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "trainer": {"devices": 1, "num_nodes": 1}})
    monkeypatch.setattr(medmtl.lightning_ddp, "is_primary_process", lambda: True)
    with pytest.raises(RuntimeError):
        run_job(connection_closed, single, in_sweep=False)
    assert read_failure(tmp_path)["kind"] == "crash"


@pytest.mark.slow
def test_a_user_error_met_by_both_ddp_ranks_is_one_sentence_without_rank_1s_traceback(tmp_path):
    """Two CPU processes, an image side the U-Net refuses: one "error:" line, no traceback, exit 2."""
    done = run(
        "train.py",
        [
            *TINY,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "data.image_size=30",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: UNetVGG16 needs image sides divisible by 16, got (30, 30)."
    ]


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([*TINY, "data.fold=7"], "data.fold must be in [0, 4], got 7."),
        ([*TINY, "optim.optimizer.lr=-0.001"], "optim.optimizer.lr must be a positive number, got -0.001."),
        ([*TINY, "optim=mao", "optim.gradient_clip_val=1"], "does not clip gradients"),
        (
            [*TINY, "optim=pcgrad", "optim.strategy.mode=gramian", "callbacks=diagnostics"],
            "cannot run with optim.strategy.mode=gramian",
        ),
        ([*TINY, "ckpt_path=/nowhere/last.ckpt"], "Checkpoint not found: /nowhere/last.ckpt."),
        ([*TINY, "optim=no_such_strategy"], "Could not find 'optim/no_such_strategy'"),
        (["experiment=idrid_moe", "preset=tiny", "data.lesions=[xx]"], "Unknown IDRiD tasks ['xx']"),  # inside instantiate
    ],
)
def test_configuration_errors_exit_2_with_one_sentence_and_no_traceback(tmp_path, overrides, message):
    result = run("train.py", overrides + [f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1, "the sentence was printed twice (wrapped twice)"
    if "optim=no_such_strategy" not in overrides:  # composition errors come before any run folder
        assert message in read_failure(tmp_path / "run")["message"]


def test_hydra_full_error_shows_the_traceback(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [sys.executable, "src/train.py", *TINY, "data.fold=7", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=Path(__file__).resolve().parents[1],
        env=env | {"MEDMTL_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "data.fold must be in" in result.stderr


def test_a_diverging_run_exits_3_and_keeps_only_finite_checkpoints(tmp_path):
    """Weights poisoned at the start of epoch 2: epochs 0-1 were checkpointed; the run stops at the
    first iteration of epoch 2 with exit code 3, a failure record, and every checkpoint finite."""
    folder = tmp_path / "run"
    result = run(
        "train.py",
        TINY
        + [
            "trainer.max_epochs=4",
            "optim=vanilla",
            f"hydra.run.dir={folder}",
            "+callbacks.poison._target_=crash_callback.PoisonWeights",
            "+callbacks.poison.epoch=2",
        ],
        tmp_path,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Training stopped at iteration 12 (epoch 2): the loss of task 'glaucoma' is NaN or infinite" in result.stderr
    assert not (folder / "metrics.json").exists() and read_failure(folder)["exit_code"] == 3
    checkpoints = list((folder / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2
    for path in checkpoints:
        state = read_checkpoint(path)
        assert state["epoch"] in (0, 1)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()), path


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_sweep_and_the_sweep_says_which_failed(tmp_path):
    sweep = tmp_path / "sweep"
    result = run("train.py", ["-m", *TINY, "data.fold=0,9", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert (sweep / "0" / "metrics.json").is_file()
    assert "1 of 2 jobs" in result.stderr and "data.fold must be in [0, 4], got 9." in result.stderr
    report = run("report.py", [str(sweep)], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "failed (configuration error)" in report.stdout and "got 9" in report.stdout


# ----- folders -------------------------------------------------------------------------------------
def test_a_folder_in_use_by_another_process_is_refused_naming_it(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from medmtl.utils import folder_lock; "
                f"folder_lock.acquire({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderConflict, match=rf"in use by process {holder.pid} on .* since "):
            folder_lock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    folder_lock.acquire(tmp_path)  # a dead holder leaves no stale lock
    assert folder_lock.holds(tmp_path)
    folder_lock.release(tmp_path)


def _generate(root: str, queue) -> None:
    from medmtl.data.refuge_synthetic import generate_synthetic_refuge

    generate_synthetic_refuge(root, SMALL_SPEC)
    queue.put(sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file()))


@pytest.mark.slow
def test_two_processes_generating_one_synthetic_dataset_take_turns(tmp_path):
    root = tmp_path / "REFUGE"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_generate, args=(str(root), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    listings = [queue.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert listings[0] == listings[1] and len(listings[0]) > 2 * (SMALL_SPEC.n_train + SMALL_SPEC.n_val)
    assert not list(tmp_path.glob(".REFUGE.partial-*")), "a partial dataset was left behind"


# ----- caches --------------------------------------------------------------------------------------
def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_the_cache_lives_outside_the_data_and_follows_changed_sources(refuge_root, tmp_path):
    import shutil

    import cv2

    root = tmp_path / "REFUGE"
    shutil.copytree(refuge_root, root)
    before = _snapshot(root)
    dm = RefugeDataModule(str(root), image_size=32, augment=False, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert _snapshot(root) == before, "preparing the data wrote into the dataset folder"
    index = 0
    first = dm.datasets["test"][index]["image"]
    sample = dm.datasets["test"].samples[index]
    image = cv2.imread(str(sample.image))
    cv2.imwrite(str(sample.image), 255 - image)  # the image is replaced after the first run
    again = RefugeDataModule(str(root), image_size=32, augment=False, cache_dir=str(tmp_path / "cache"))
    again.setup()
    changed = again.datasets["test"][index]["image"]
    assert not torch.allclose(changed, first), "the cache served the old image"
    torch.testing.assert_close(changed, 1 - first, atol=0.05, rtol=0)  # the new one, inverted
    assert len(list((tmp_path / "cache").rglob(f"{sample.id}-*.npz"))) == 1, "the stale entry was kept"


@pytest.mark.parametrize("damage", ["truncated", "rewritten"])
def test_a_damaged_cache_entry_is_rebuilt_not_served(tmp_path, damage, caplog):
    """An entry truncated or rewritten after it was written no longer matches its recorded SHA-256:
    it is rebuilt (with a warning) and the rebuilt content is served."""
    import logging

    import numpy as np

    from medmtl.data.cache import SampleCache, digest_file_of

    cache = SampleCache(tmp_path / "cache", "toy", tmp_path / "data")
    built = []

    def build():
        built.append(1)
        return {"x": np.arange(1000, dtype=np.float32)}

    cache.ensure([("entry", "k1", build)], "toy entries")
    entry = cache.path("entry", "k1")
    assert digest_file_of(entry).is_file() and len(built) == 1
    cache.ensure([("entry", "k1", build)], "toy entries")
    assert len(built) == 1, "an intact entry was rebuilt"
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:200])
    else:
        np.savez(entry, x=np.zeros(1000, dtype=np.float32))
    with caplog.at_level(logging.WARNING, logger="medmtl.data.cache"):
        cache.ensure([("entry", "k1", build)], "toy entries")
    assert len(built) == 2 and "is damaged or unverified" in caplog.text
    np.testing.assert_array_equal(SampleCache.load(entry)["x"], np.arange(1000, dtype=np.float32))


@pytest.mark.parametrize("fault", ["file in place of the folder", "read-only folder"])
def test_an_unwritable_cache_is_one_sentence_and_leaves_no_temporary_file(tmp_path, fault):
    import os

    import numpy as np

    from medmtl.data.cache import SampleCache
    from medmtl.errors import StorageError

    if fault == "file in place of the folder":
        (tmp_path / "cache").write_text("not a folder")
        cache = SampleCache(tmp_path / "cache", "toy", tmp_path / "data")
    else:
        cache = SampleCache(tmp_path / "cache", "toy", tmp_path / "data")
        cache.folder.mkdir(parents=True)
        cache.folder.chmod(0o500)
        if os.access(cache.folder, os.W_OK):  # root ignores permissions: no fault to provoke here
            cache.folder.chmod(0o700)
            (cache.folder / "entry-k.npz").mkdir()  # a folder where the entry's file must go
    with pytest.raises(StorageError, match="Cannot write the cache entry .*paths.cache_dir") as raised:
        cache.ensure([("entry", "k", lambda: {"x": np.zeros(3)})], "toy entries")
    assert "\n" not in str(raised.value)
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp." in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    if cache.folder.exists():
        cache.folder.chmod(0o700)


# ----- evaluation from the run's own configuration ---------------------------------------------------
@pytest.mark.slow
def test_eval_rebuilds_model_and_data_from_the_run_and_reproduces_its_test_metrics(tmp_path):
    folder = tmp_path / "run"
    trained = run("train.py", TINY + [f"hydra.run.dir={folder}"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    record = json.loads((folder / "metrics.json").read_text())
    evaluated = run("eval.py", [f"ckpt_path={record['best_checkpoint']}", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for name, value in record["test"].items():
        assert again["test"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name

    other = tmp_path / "other_data"
    moved = run(
        "eval.py",
        [
            f"ckpt_path={record['best_checkpoint']}",
            f"data.root={other}",
            "data.synthetic.seed=5",
            f"hydra.run.dir={tmp_path / 'eval2'}",
        ],
        tmp_path,
    )
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert (other / ".synthetic_refuge.json").is_file(), "the override of data.root was not used"
    saved = (tmp_path / "eval2" / "config_resolved.yaml").read_text()
    assert f"root: {other}" in saved and "width: 0.0625" in saved
    assert json.loads((tmp_path / "eval2" / "metrics.json").read_text())["test"] != record["test"]


@pytest.mark.slow
def test_eval_refuses_a_checkpoint_of_another_model_in_one_sentence(tmp_path):
    folder = tmp_path / "run"
    assert run("train.py", TINY + [f"hydra.run.dir={folder}"], tmp_path).returncode == 0
    result = run("eval.py", [f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}", "model.width=0.125"], tmp_path)
    assert result.returncode == 2 and "does not fit this model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_w_and_b_with_a_key_but_no_server_logs_offline_and_says_how_to_sync(tmp_path, monkeypatch):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    result = run("train.py", TINY + ["logger=wandb", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not reachable within 3 s: logging offline; sync later with `wandb sync" in result.stdout + result.stderr
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_a_plateau_scheduler_steps_on_the_validation_loss(tmp_path):
    """ReduceLROnPlateau needs the monitored value at each epoch end (it crashed with a bare step())."""
    folder = tmp_path / "run"
    scheduler = [
        "+optim.scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau",
        "+optim.scheduler._partial_=true",
        "+optim.scheduler.patience=0",
        "+optim.scheduler.factor=0.5",
    ]
    result = run("train.py", [*TINY, "optim=vanilla", "trainer.max_epochs=3", *scheduler, f"hydra.run.dir={folder}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (folder / "metrics.json").is_file()


@pytest.mark.parametrize("name", ["identity.json", "metrics.json"])
@pytest.mark.parametrize(
    "content", [b'{"config_digest": "ab', b"\xff\xfe", b"[1, 2]"], ids=["truncated", "not_text", "not_a_record"]
)
def test_an_unreadable_run_record_is_one_sentence_naming_it(name, content, tmp_path):
    """A run folder whose identity or metrics record is truncated or overwritten cannot be
    identified: refused in one sentence naming the file (it was a JSON traceback)."""
    from medmtl.errors import RunFolderConflict
    from medmtl.utils.run_identity import check_reused_folder

    (tmp_path / name).write_bytes(content)
    with pytest.raises(RunFolderConflict, match=f"{name} is not readable JSON .* delete that file"):
        check_reused_folder(tmp_path, "0123456789abcdef")


def test_recorded_runs_stay_recognised_when_an_option_is_added_at_its_earlier_behaviour(tmp_path):
    """A MultiMNIST run recorded (results/) before ``test_weights`` existed: today's composition adds
    ``test_weights: best``, what every run did before, and a rerun sweep must skip the run, not refuse
    it as another configuration; ``last`` is another configuration. A run recorded while the key was
    still in the digest is recognised too."""
    from omegaconf import OmegaConf

    from helpers import PROJECT_ROOT
    from medmtl.utils.run_identity import check_reused_folder, config_digest, earlier_digests

    recorded = PROJECT_ROOT / "results" / "multimnist_sener2018" / "5"
    config = OmegaConf.load(recorded / "config_resolved.yaml")
    assert "test_weights" not in config, "the test needs a run recorded before the option existed"
    today = OmegaConf.merge(config, {"test_weights": "best"})
    finished = check_reused_folder(recorded, config_digest(today), earlier_digests(today))
    assert finished is not None and finished["test"]["left_acc"] > 0.9
    other = OmegaConf.merge(config, {"test_weights": "last"})
    with pytest.raises(RunFolderConflict, match="another configuration"):
        check_reused_folder(recorded, config_digest(other), earlier_digests(other))
    (tmp_path / "metrics.json").write_text(json.dumps({"config_digest": config_digest(today, drop_later_keys=False)}))
    assert check_reused_folder(tmp_path, config_digest(today), earlier_digests(today)) is not None
