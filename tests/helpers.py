"""Everything the test modules share (they import from here only, never from each other): paths
and the real sample data, config composition, a quiet trainer, a StepContext without Lightning,
tiny models and batches, the entry points run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medmtl.catalogue import compose_train, options  # noqa: F401  (re-exported for the tests)
from medmtl.data.refuge_synthetic import SyntheticRefugeSpec
from medmtl.models.unet_vgg16 import UNetVGG16
from medmtl.strategies.context import PlainContext  # noqa: F401  (re-exported for the tests)
from medmtl.tasks import refuge_tasks


def tiny_unet(seed: int = 0, dtype=torch.float64) -> UNetVGG16:
    torch.manual_seed(seed)
    return UNetVGG16(refuge_tasks(), width=1 / 16, dropout=0.0).to(dtype)


def random_batch(seed: int = 0, size: int = 32, n: int = 2, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    od = (torch.rand(n, size, size, generator=g) > 0.6).to(dtype)
    return {
        "image": torch.rand(n, 3, size, size, generator=g, dtype=dtype),
        "od": od,
        "oc": od * (torch.rand(n, size, size, generator=g) > 0.5).to(dtype),
        "fovea_heatmap": torch.rand(n, size, size, generator=g, dtype=dtype),
        "glaucoma": torch.tensor([1.0, 0.0][:n] + [0.0] * max(0, n - 2), dtype=dtype),
    }


def random_digits_batch(seed: int = 0, n: int = 4, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A MultiMNIST-shaped batch (1 x 28 x 28 images, the left and right digits' classes)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(n, 1, 28, 28, generator=g, dtype=dtype),
        "left": torch.randint(0, 10, (n,), generator=g),
        "right": torch.randint(0, 10, (n,), generator=g),
    }


def per_task_gradients(model, batch, tasks, params):
    """Reference: one full backward per task (what the strategy must NOT do, but must equal)."""
    rows = []
    for task in tasks:
        model.zero_grad(set_to_none=True)
        loss = task.compute_loss(model(batch["image"])[task.name], batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]))
    return torch.stack(rows)


def sgd_step_along(params, direction: torch.Tensor, lr: float) -> None:
    """The reference's plain SGD step: every parameter moves by -lr times its slice of the flat
    ``direction`` (parameters in ``params`` order)."""
    with torch.no_grad():
        offset = 0
        for p in params:
            p -= lr * direction[offset : offset + p.numel()].view_as(p)
            offset += p.numel()


PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF = PROJECT_ROOT / "conf"
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
#: the real sample files beside the repository (CI has them; a test that reads them says when absent)
IDRID_SAMPLE = SHARED_DATA / "idrid"
needs_idrid_sample = pytest.mark.skipif(
    not (IDRID_SAMPLE / "A. Segmentation").is_dir(), reason=f"the IDRiD sample is not at {IDRID_SAMPLE}"
)
MNIST_SAMPLE = SHARED_DATA / "mnist"
needs_mnist_sample = pytest.mark.skipif(
    not (MNIST_SAMPLE / "MNIST" / "raw").is_dir(), reason=f"the official MNIST files are not at {MNIST_SAMPLE}"
)
MEDMNIST_SAMPLE = SHARED_DATA / "medmnist"
needs_medmnist_sample = pytest.mark.skipif(
    not (MEDMNIST_SAMPLE / "breastmnist.npz").is_file(), reason=f"the official MedMNIST sample files are not at {MEDMNIST_SAMPLE}"
)

#: Small enough to write in a second, large enough for 5 stratified folds.
SMALL_SPEC = SyntheticRefugeSpec(
    n_train=24,
    n_val=16,
    n_test=10,
    train_size=(176, 160),
    eval_size=(160, 160),
    glaucoma_threshold=0.55,
    seed=3,
)


def quiet_trainer(tmp_path: Path, **settings):
    """A CPU Lightning trainer without logger, progress bar, summary, sanity check or checkpoints;
    ``settings`` (max_epochs, limit_*_batches, ...) are passed on."""
    import lightning as L

    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        **settings,
    )


#: the quickstart shrunk to seconds: a tiny U-Net, 32 px, a 38-image synthetic REFUGE, one epoch
TINY = [
    "experiment=quickstart",
    "model.width=0.0625",
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.synthetic.n_train=20",
    "data.synthetic.n_val=10",
    "data.synthetic.n_test=8",
    "data.synthetic.train_size=[96,96]",
    "data.synthetic.eval_size=[96,96]",
    "data.synthetic.glaucoma_threshold=0.55",
    "trainer.max_epochs=1",
    # the paper experiments' rule (the tests check model selection through it), not the quickstart's
    "test_weights=best",
    # the paper experiments' batch norm (the authors': no running statistics), not the quickstart's
    "model.norm_statistics=batch",
]


def run(script: str, overrides: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MEDMTL_LOG_DIR": str(tmp_path / "logs"),
        "MEDMTL_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "src" / script), *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_and_read_test_metrics(overrides: list[str], tmp_path: Path) -> dict[str, float]:
    """``src/train.py`` with ``overrides`` into ``tmp_path/run``, checked to end with 0; the test
    metrics its ``metrics.json`` records."""
    import json

    done = run("train.py", [*overrides, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]


def fit_briefly(module, datamodule, tmp_path, test: bool = False, **limits):
    """Two training iterations through Lightning (``quiet_trainer``), checked: the iteration count,
    finite weights, most parameters moved; the test stage's metrics when ``test``."""
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, **limits)
    trainer.fit(module, datamodule=datamodule)
    assert module.iterations == 2
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    moved = sum(not torch.equal(a, b) for a, b in zip(before, module.model.parameters()))
    assert moved > len(before) // 2, f"only {moved} of {len(before)} parameters moved"
    return trainer.test(module, datamodule=datamodule, verbose=False)[0] if test else None


def untrained_and_trained(overrides: list[str], tmp_path: Path) -> tuple[dict, dict]:
    """Test metrics of the same configuration without training (``train=false``) and trained."""
    import json

    results = {}
    for name, extra in (("untrained", ["train=false"]), ("trained", [])):
        done = run("train.py", [*overrides, *extra, f"task_name={name}"], tmp_path, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        (metrics,) = (tmp_path / "logs" / name / "runs").glob("*/metrics.json")
        results[name] = json.loads(metrics.read_text())["test"]
    return results["untrained"], results["trained"]


def libmtl_update(class_name: str, jacobian: torch.Tensor, **kwargs) -> torch.Tensor:
    """The shared update LibMTL 1.1.5's weighting ``class_name`` writes for the task Jacobian
    ``jacobian`` (T x n): its documented ``backward(losses, **kwargs)`` on the losses L_k = J_k . x
    of one shared parameter vector x, whose task gradients are then exactly the rows of J."""
    import types

    import torch.hub

    # LibMTL 1.1.5 imports torchvision.models.utils, removed from torchvision since; the one
    # function it takes from there lives in torch.hub
    sys.modules.setdefault(
        "torchvision.models.utils", types.SimpleNamespace(load_state_dict_from_url=torch.hub.load_state_dict_from_url)
    )
    import LibMTL.weighting as weighting

    x = torch.zeros(jacobian.shape[1], dtype=jacobian.dtype, requires_grad=True)

    class Adapter(getattr(weighting, class_name)):
        def __init__(self):
            super().__init__()
            self.task_num, self.device, self.rep_grad = jacobian.shape[0], jacobian.device, False

        def get_share_params(self):
            return [x]

        def zero_grad_share_params(self):
            if x.grad is not None:
                x.grad.zero_()

    adapter = Adapter()
    adapter.init_param()
    adapter.backward(jacobian @ x, **kwargs)
    assert x.grad is not None
    return x.grad.detach()
