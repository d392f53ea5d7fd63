"""Does the input pipeline keep the model busy, and what does the framework cost over a plain loop?

    python benchmarks/bench_throughput.py                   # CPU: reduced sizes, results/throughput_cpu.md
    python benchmarks/bench_throughput.py --device cuda --full   # a GPU at the papers' sizes

1. Input pipeline, per dataset (its synthetic twin, in its official layout, read by the same
   loader with training augmentation): images per second the training loader delivers with each
   ``--workers`` count (the first batch, i.e. worker start-up, left out), against the images per
   second the dataset's own network consumes in a vanilla training step on one batch of that
   loader (kept on the device: the model's demand). supply / demand >= 1 means the loader can keep
   up, since its workers run while the device computes. On a CPU the loader's workers and the model
   share the same cores, so the ratio is only indicative there.
2. Framework overhead: seconds per vanilla iteration through the framework (``MultiTaskModule`` in
   the configured Lightning Trainer with its callbacks -- checkpoints, progress bar -- and CSV
   logger, as ``src/train.py`` builds them) against a plain PyTorch loop on the same network,
   batches, loss and optimizer (forward, sum of the task losses, backward, Adam step). Both read the
   same in-memory batches (host to device copy included in both), so the difference is the
   framework's own cost. Timed between iteration starts, device synchronised at the two ends only.
3. On CUDA also the device busy fraction over ``--steps`` framework iterations: the summed duration
   of the device kernels (``torch.profiler``) over the wall time of those iterations.

Ratios are measured in one run; absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

#: dataset -> the overrides of its usual network (each a synthetic twin, randomly initialised:
#: the speed does not depend on the weights); ``small`` for a CPU
SETTINGS = {
    "refuge": {
        "full": ["data=refuge_synthetic", "model=unet_vgg16", "model.pretrained=false"],
        "small": ["data.image_size=128", "model.width=0.25"],
    },
    "idrid": {"full": ["experiment=idrid_moe", "model.weights_path=null"], "small": ["model.backbone=resnet18"]},
    "nyudv2": {
        "full": ["experiment=nyudv2_survey_table5", "model.weights_path=null"],
        "small": ["data.synthetic.size=[144,192]", "model.backbone=resnet18", "model.aspp_width=64"],
    },
    # GA (Schafer et al. 2024): one batch of every task per step, each from its own dataset
    # Sener & Koltun 2018's multi-LeNet at the paper's batch (256): a network so small that the
    # framework's fixed cost per step would show
    "multimnist": {"full": ["experiment=multimnist_sener2018"], "small": []},
    "medmnist": {
        "full": ["experiment=medmnist_umedpt", "model.weights_path=null", "optim=ga"],
        "small": ["model.backbone=test_resnet"],
    },
}


def compose(setting: str, full: bool, extra: list[str]):
    from medmtl.catalogue import compose_train

    chosen = SETTINGS[setting]
    strategy = [] if any(o.startswith("optim=") for o in chosen["full"]) else ["optim=vanilla"]
    return compose_train(chosen["full"] + ([] if full else chosen["small"]) + strategy + list(extra))


def datamodule_of(cfg, workers: int, pin_memory: bool):
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, num_workers=workers, pin_memory=pin_memory)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def batch_size_of(batch: dict, input_keys) -> int:
    return int(batch[input_keys[0]].shape[0])


def training_loaders(datamodule) -> dict:
    """The loaders a training step reads: one per task where each task has its own data (GA on
    MedMNIST), else the one training loader (key ``all``)."""
    if datamodule.separate_task_inputs:
        return {task.name: datamodule.task_dataloader(task.name) for task in datamodule.tasks}
    return {"all": datamodule.train_dataloader()}


def endless(loader):
    """The batches of ``loader``, pass after pass (one loader re-iterated, as Lightning does)."""
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def loader_rate(cfg, workers: int, rounds: int, pin_memory: bool) -> tuple[float, dict, object]:
    """Images per second the training loaders deliver over ``rounds`` rounds (a batch of each
    loader) after the first; the first round's batches; the datamodule."""
    datamodule = datamodule_of(cfg, workers, pin_memory)
    streams = {name: endless(loader) for name, loader in training_loaders(datamodule).items()}
    first = {name: next(stream) for name, stream in streams.items()}
    started, images = time.perf_counter(), 0
    for _ in range(rounds):
        images += sum(batch_size_of(next(stream), datamodule.input_keys) for stream in streams.values())
    return images / (time.perf_counter() - started), first, datamodule


def training_step(cfg, tasks, input_keys, batches: dict, device):
    """A training step of the configured strategy and network on ``batches`` (one per loader: the
    joint batch ``all``, or one per task), repeated at every call."""
    from hydra.utils import instantiate

    from bench_strategies import repeating_context
    from medmtl.models import build_model
    from medmtl.run import _optimizer_factory

    strategy = instantiate(cfg.optim.strategy)
    strategy.setup([t.name for t in tasks])
    model = build_model(instantiate(cfg.model), tasks, strategy.separate_networks).to(device)
    optimizers = strategy.configure_optimizers(model, _optimizer_factory(cfg.optim))
    joint = batches.get("all")
    ctx = repeating_context(model, tasks, optimizers, joint, input_keys, task_batches=batches)
    return lambda: strategy.training_step(ctx, joint)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_rate(cfg, datamodule, batches: dict, device, steps: int) -> float:
    """Images per second of training steps on ``batches`` (one per loader) kept on the device."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    batches = move_data_to_device(batches, device)
    step = training_step(cfg, datamodule.tasks, datamodule.input_keys, batches, device)
    for _ in range(2):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    images = sum(batch_size_of(batch, datamodule.input_keys) for batch in batches.values())
    return steps * images / (time.perf_counter() - started)


def pipeline_rows(args, device) -> list[str]:
    rows = [
        "| dataset | input | images / step | workers | loader images/s | model images/s | supply / demand |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for setting in args.datasets:
        cfg = compose(setting, args.full, [f"paths.data_dir={args.data_dir}", f"paths.cache_dir={args.data_dir}/cache"])
        demand = None
        for workers in args.workers:
            supply, firsts, datamodule = loader_rate(cfg, workers, args.loader_batches, pin_memory=device.type == "cuda")
            if demand is None:
                demand = model_rate(cfg, datamodule, firsts, device, args.steps)
            first = next(iter(firsts.values()))
            shape = "x".join(str(s) for s in first[datamodule.input_keys[0]].shape[1:])
            size = batch_size_of(first, datamodule.input_keys) * len(firsts)
            rows.append(f"| {setting} | {shape} | {size} | {workers} | {supply:.1f} | {demand:.1f} | {supply / demand:.2f} |")
            print(rows[-1], flush=True)
    return rows


class StartTimes:
    """A Lightning callback: the wall-clock time at each training iteration's start."""

    def __new__(cls, device):
        import lightning as L

        class _StartTimes(L.Callback):
            def __init__(self):
                self.times: list[float] = []

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx in (0, 2) or trainer.global_step + 1 >= trainer.max_steps:
                    synchronize(device)
                self.times.append(time.perf_counter())

        return _StartTimes()


def seconds_per_iteration(times: list[float], warmup: int = 2) -> float:
    """Mean seconds per iteration between the start of iteration ``warmup`` and of the last one."""
    return (times[-1] - times[warmup]) / (len(times) - 1 - warmup)


#: framework runs of the overhead comparison: label -> overrides (where the framework's cost goes)
FRAMEWORK_VARIANTS = {
    "framework (as configured: Lightning, callbacks, CSV logger, non-finite guard)": [],
    "framework, logger every 50 steps": ["trainer.log_every_n_steps=50"],
    "framework, non-finite guard off": ["optim.nonfinite=off"],
    "framework, both": ["trainer.log_every_n_steps=50", "optim.nonfinite=off"],
}


def framework_seconds(cfg, datamodule, memory: list, device) -> float:
    """Seconds per iteration of ``cfg``'s module in ``cfg``'s trainer over the in-memory ``memory``."""
    import torch
    from torch.utils.data import DataLoader

    from medmtl.run import _instantiate_group, build_module, build_trainer

    torch.manual_seed(0)
    module = build_module(cfg, datamodule)
    timer = StartTimes(device)
    # as src/train.py without a validation split: nothing to select on, the last-epoch checkpoint kept
    callbacks = [c for c in _instantiate_group(cfg.get("callbacks")) if getattr(c, "monitor", None) is None]
    trainer = build_trainer(cfg, callbacks + [timer], _instantiate_group(cfg.get("logger")), validate=False)
    trainer.fit(module, train_dataloaders=DataLoader(memory, batch_size=None))
    return seconds_per_iteration(timer.times)


def plain_seconds(cfg, datamodule, memory: list, device) -> float:
    """Seconds per iteration of a plain PyTorch loop: forward, summed task losses, backward, step."""
    import torch
    from hydra.utils import instantiate
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data import DataLoader

    from medmtl.run import _optimizer_factory

    torch.manual_seed(0)
    tasks, keys = datamodule.tasks, datamodule.input_keys
    model = instantiate(cfg.model)(tasks=tasks).to(device)
    optimizer = _optimizer_factory(cfg.optim)(model.parameters())
    times = []
    for index, batch in enumerate(DataLoader(memory, batch_size=None)):
        if index in (0, 2, len(memory) - 1):
            synchronize(device)
        times.append(time.perf_counter())
        batch = move_data_to_device(batch, device)
        outputs = model(*[batch[k] for k in keys])
        loss = sum(task.compute_loss(outputs[task.name], batch) for task in tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return seconds_per_iteration(times)


def overhead_rows(args, device) -> list[str]:
    """Framework vs plain loop on ``args.overhead_setting``'s network (REFUGE's U-Net by default),
    the same batches and optimizer; the framework
    also with sparser logging and without the non-finite guard, to say where its cost goes."""
    results: dict[str, list[float]] = {"plain PyTorch": []} | {label: [] for label in FRAMEWORK_VARIANTS}
    with tempfile.TemporaryDirectory() as output:
        overrides = [
            f"paths.data_dir={args.data_dir}",
            f"paths.cache_dir={args.data_dir}/cache",
            f"paths.output_dir={output}",
            f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            f"+trainer.max_steps={args.steps + 3}",
            "trainer.max_epochs=-1",
        ]
        cfg = compose(args.overhead_setting, args.full, overrides + list(args.overhead_overrides))
        _, firsts, datamodule = loader_rate(cfg, 0, 1, pin_memory=False)
        memory = [firsts["all"]] * (args.steps + 3)
        for _ in range(args.repeats):
            results["plain PyTorch"].append(plain_seconds(cfg, datamodule, memory, device))
            for label, variant in FRAMEWORK_VARIANTS.items():
                varied = compose(args.overhead_setting, args.full, overrides + list(args.overhead_overrides) + variant)
                results[label].append(framework_seconds(varied, datamodule, memory, device))
    plain = statistics.median(results["plain PyTorch"])
    rows = ["| loop | s / iteration (median of runs) | x plain | ms over plain |", "|---|---:|---:|---:|"]
    for label, values in results.items():
        seconds = statistics.median(values)
        rows.append(f"| {label} | {seconds:.4f} | {seconds / plain:.3f} | {1000 * (seconds - plain):.1f} |")
    print("\n".join(rows), flush=True)
    return rows


class BusyWindow:
    """A Lightning callback profiling device kernels from iteration ``start`` to the end of
    training: ``fraction`` = summed kernel and copy time / wall time of that window."""

    def __new__(cls, device, start: int = 2):
        import lightning as L
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        class _BusyWindow(L.Callback):
            def __init__(self):
                self.profiler = profile(activities=[ProfilerActivity.CUDA])
                self.seen, self.started, self.fraction = 0, 0.0, float("nan")

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                self.seen += 1
                if self.seen == start + 1:
                    synchronize(device)
                    self.profiler.start()
                    self.started = time.perf_counter()

            def on_train_end(self, trainer, pl_module):
                synchronize(device)
                wall = time.perf_counter() - self.started
                self.profiler.stop()
                events = self.profiler.events() or []
                busy_us = sum(e.time_range.elapsed_us() for e in events if e.device_type == DeviceType.CUDA)
                self.fraction = busy_us / 1e6 / wall

        return _BusyWindow()


def busy_rows(args, device) -> list[str]:
    """Device busy fraction of vanilla REFUGE training through ``src/train.py``'s trainer and the
    real loader (synthetic twin at full size, augmentation on), per worker count."""
    from medmtl.run import _instantiate_group, build_module, build_trainer

    rows = ["| workers | pinned memory | epochs | busy fraction |", "|---:|---|---:|---:|"]
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as output:
            overrides = [
                f"paths.data_dir={args.data_dir}",
                f"paths.cache_dir={args.data_dir}/cache",
                f"paths.output_dir={output}",
                "trainer.accelerator=gpu",
                f"trainer.max_epochs={args.epochs}",
            ]
            cfg = compose("refuge", True, overrides)
            datamodule = datamodule_of(cfg, workers, True)
            module = build_module(cfg, datamodule)
            window = BusyWindow(device)
            trainer = build_trainer(cfg, [window], _instantiate_group(cfg.get("logger")), validate=False)
            trainer.fit(module, datamodule=datamodule)
        rows.append(f"| {workers} | yes | {args.epochs} | {window.fraction:.3f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="the papers' sizes (default on CUDA)")
    parser.add_argument("--datasets", nargs="*", default=list(SETTINGS))
    parser.add_argument("--workers", nargs="*", type=int, default=[0, 2])
    parser.add_argument("--loader-batches", type=int, default=20, help="timed batches (per task loader)")
    parser.add_argument("--steps", type=int, default=20, help="timed training iterations")
    parser.add_argument("--repeats", type=int, default=3, help="framework / plain runs (median)")
    parser.add_argument(
        "--overhead-overrides", nargs="*", default=[], help="config overrides of the overhead comparison, e.g. model.width=0.0625"
    )
    parser.add_argument("--overhead-setting", default="refuge", choices=list(SETTINGS), help="the overhead comparison's network")
    parser.add_argument("--epochs", type=int, default=2, help="CUDA busy fraction: training epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(HERE.parent / "data"), help="where the synthetic twins are written")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.full = args.full or device.type == "cuda"
    output = Path(args.output or HERE / "results" / f"throughput_{device.type}.md")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    lines = [
        "# Throughput: input pipeline and framework overhead",
        "",
        f"Device: {name}; sizes: {'the papers' if args.full else 'reduced (CPU)'}; torch {torch.__version__}.",
        "",
        "## Input pipeline: loader supply against the model's demand",
        "",
        *pipeline_rows(args, device),
        "",
        f"## Framework overhead: vanilla {args.overhead_setting} iteration, {args.steps} timed iterations, "
        f"median of {args.repeats}" + (f" ({' '.join(args.overhead_overrides)})" if args.overhead_overrides else ""),
        "",
        *overhead_rows(args, device),
    ]
    if device.type == "cuda":
        lines += ["", "## Device busy fraction: vanilla REFUGE training, real loader", "", *busy_rows(args, device)]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print(f"written: {output}")


if __name__ == "__main__":
    main()
