"""``trainer=ddp`` as a user runs it: two CPU processes (gloo) launched by Lightning from
``src/train.py`` / ``src/eval.py``.

- Evaluation is exact: a checkpoint tested by two ranks gets the metrics one process gets, on a
  test split of 7 images (odd: a padded sampler would count one twice), each image once.
- Training resumes exactly: two epochs in one go, or one epoch and a second run continuing from its
  checkpoint, end at the same weights (GA's balanced sampler leaves each rank's per-task loaders
  part-way through their passes: each rank's positions and random states must be restored).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import TINY, run

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
SEVEN_TEST_IMAGES = [o for o in TINY if not o.startswith("data.synthetic.n_test")] + ["data.synthetic.n_test=7"]


@pytest.mark.slow
def test_two_ranks_test_a_checkpoint_as_one_process_does(tmp_path):
    folder = tmp_path / "trained"
    trained = run("train.py", SEVEN_TEST_IMAGES + [f"hydra.run.dir={folder}", "test=false"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = folder / "checkpoints" / "last.ckpt"
    evaluate = [o for o in SEVEN_TEST_IMAGES if not o.startswith(("experiment", "trainer"))]
    evaluate += ["data=refuge_synthetic", f"ckpt_path={checkpoint}"]
    records, predictions = {}, {}
    for name, extra in (("one", ["trainer=cpu"]), ("two", DDP)):
        result = run("eval.py", evaluate + extra + [f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        records[name] = json.loads((tmp_path / name / "metrics.json").read_text())["test"]
        predictions[name] = dict(np.load(tmp_path / name / "predictions.npz"))
        assert predictions[name]["index"].tolist() == list(range(7)), f"{name}: each test image once, in order"
    assert records["one"].keys() == records["two"].keys()
    for metric, value in records["one"].items():
        assert records["two"][metric] == pytest.approx(value, rel=1e-5, abs=1e-7), metric
    per_image = [k for k in predictions["one"] if not k.startswith("example_")]
    for key in per_image:  # the per-image rows of predictions.npz, as one process writes them
        np.testing.assert_allclose(predictions["two"][key], predictions["one"][key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_a_ddp_run_continued_from_its_checkpoint_ends_where_the_uninterrupted_one_does(tmp_path):
    common = TINY + DDP + ["optim=ga", "optim.strategy.sampler=balanced", "data.augment=true", "test=false"]
    straight = run("train.py", common + ["trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = run("train.py", common + ["trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'first'}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert len(torch.load(checkpoint, weights_only=True)["medmtl_rank_states"]) == 2
    continued = run(
        "train.py",
        common + ["trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'continued'}", f"ckpt_path={checkpoint}"],
        tmp_path,
    )
    assert continued.returncode == 0, continued.stderr[-3000:]
    final = torch.load(tmp_path / "continued" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    reference = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert final.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-6, atol=1e-8, msg=name)


@pytest.mark.slow
def test_a_strategy_with_a_lazy_router_starts_under_ddp(tmp_path):
    """LDC-MTL's router is sized at the first step: the start-of-training broadcast of rank 0's
    parameters must leave it out (it failed on the uninitialised parameter), and the router drawn
    on rank 0 at the first step is the one trained and saved."""
    folder = tmp_path / "ldc"
    result = run("train.py", TINY + DDP + ["optim=ldc_mtl", "test=false", f"hydra.run.dir={folder}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["strategy.router.weight"].shape[0] == 4 and torch.isfinite(state["strategy.router.weight"]).all()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_started_by_torchrun_make_one_run(tmp_path):
    """trainer.num_nodes=2 with one process per node, each node started by its own torchrun (as a
    cluster without SLURM would): Lightning reads the ranks from torchrun's environment; rank 0
    writes the run folder, and the 24 training images make 24 / (4 x 2) = 3 iterations."""
    import os
    import subprocess
    import sys

    from helpers import PROJECT_ROOT

    folder, port = tmp_path / "run", free_port()
    overrides = TINY + ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2"]
    overrides += ["optim=pcgrad", f"hydra.run.dir={folder}"]
    env = {**os.environ, "MEDMTL_LOG_DIR": str(tmp_path / "logs"), "MEDMTL_DATA_DIR": str(tmp_path / "data")}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}"]
            + ["--master-addr=127.0.0.1", f"--master-port={port}", str(PROJECT_ROOT / "src" / "train.py"), *overrides],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    record = json.loads((folder / "metrics.json").read_text())
    assert record["iterations"] == 3
    assert "s/iteration" in outputs[0] and "s/iteration" not in outputs[1]  # the summary: rank 0's alone
