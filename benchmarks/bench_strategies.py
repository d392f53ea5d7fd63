"""Seconds per training iteration and peak memory of every strategy, as ratios to ``vanilla``.

    python benchmarks/bench_strategies.py [--width 0.25] [--size 128] [--batch 4] [--repeats 7]
    python benchmarks/bench_strategies.py --setting emotic26 [--backbone resnet18] [--size 64] [--batch 8]

Settings: ``refuge`` (default): the U-Net VGG of Pascal et al. 2022 (reduced width) on random
REFUGE-shaped batches, the four REFUGE tasks. ``emotic26``: the many-task case, EMOTIC's
two-encoder network with the 26 categories as 26 binary tasks (Hervella et al. 2024, Table 3) on
random person batches (``stl``, 26 two-encoder networks, and the reference rows are left out).
Fixed thread count, a warm-up, the median of ``repeats`` timed iterations. Each
strategy runs in its own process so that its peak memory (max resident set size on CPU, peak
allocated on CUDA) is its own. Targets (issue "every training strategy"):

- exact-Jacobian methods <= 1.1 x the cost of T backward passes, i.e. (1 + 2T) / 3 x vanilla;
- double sampling (MoDo, SDMGrad) <= 1.1 x (2T + 4) / 3 (the batch and its two halves forward, T
  backward passes per half, one for the update);
- MTL-IO <= 1.05 x T x vanilla.

torchjd's own training path for the same aggregators (``torchjd.autojac.backward`` followed by
``jac_to_grad``) and, when installed, LibMTL's weightings (a full backward per task) are timed in
the same run for comparison (rows ``torchjd:<name>``, ``libmtl:<name>``).

Writes ``benchmarks/results/strategies.md`` (and prints it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

#: representatives of the other gradient modes (a row each besides every strategy's default mode)
GRAMIAN_VARIANTS = ["pcgrad", "mgda", "jd_upgrad"]
#: aggregators timed again with torchjd's host solver (default: the device solvers)
HOST_SOLVER_VARIANTS = ["jd_upgrad", "jd_imtl_g", "jd_cagrad", "jd_dualproj"]
TORCHJD_REFERENCE = {"jd_upgrad": "UPGrad", "jd_imtl_g": "IMTLG", "jd_dualproj": "DualProj", "mgda": "MGDA"}
#: our strategy -> LibMTL weighting class (and its backward kwargs), when LibMTL is installed
LIBMTL_REFERENCE = {"pcgrad": ("PCGrad", {}), "mgda": ("MGDA", {"mgda_gn": "none"}), "jd_imtl_g": ("IMTL", {})}


def discovered_strategies() -> dict:
    """Every ``src/medmtl/conf/optim`` entry (vanilla first: the baseline) with its profile."""
    from medmtl.catalogue import strategy_names, strategy_profile

    names = sorted(strategy_names(), key=lambda n: (n != "vanilla", n))
    return {name: strategy_profile(name) for name in names}


def repeating_context(model, tasks, optimizers, batch, input_keys=("image",), task_batches=None):
    """A ``PlainContext`` whose per-task streams (GA draws its own batches) and validation stream
    (Auto-Lambda) repeat one batch -- ``task_batches[task]`` where given -- so that every strategy
    does the same work on the same data."""
    import itertools

    from medmtl.strategies.context import PlainContext
    from medmtl.tasks import VALIDATION

    own = task_batches or {}
    streams = {t.name: itertools.repeat(own.get(t.name, batch)) for t in tasks} | {VALIDATION: itertools.repeat(batch)}
    return PlainContext(model, tasks, optimizers, task_batches=streams, input_keys=input_keys)


def random_batch(size: int, batch: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    od = (torch.rand(batch, size, size, generator=g) > 0.7).float()
    return {
        k: v.to(device)
        for k, v in {
            "image": torch.rand(batch, 3, size, size, generator=g),
            "od": od,
            "oc": od * (torch.rand(batch, size, size, generator=g) > 0.5).float(),
            "fovea_heatmap": torch.rand(batch, size, size, generator=g),
            "glaucoma": (torch.rand(batch, generator=g) > 0.5).float(),
        }.items()
    }


def random_person_batch(size: int, batch: int, device):
    """EMOTIC-shaped inputs (whole image, body box) and the 26 categories' binary targets."""
    import torch

    from medmtl.metrics.emotic import CATEGORY_TASKS

    g = torch.Generator().manual_seed(0)
    values = {"context": torch.rand(batch, 3, size, size, generator=g), "body": torch.rand(batch, 3, size, size, generator=g)}
    values |= {name: (torch.rand(batch, generator=g) > 0.7).float() for name in CATEGORY_TASKS}
    return {k: v.to(device) for k, v in values.items()}


def setting_tasks_and_model(setting: str, width: float, backbone: str, dropout: float):
    """The task set, a model factory and the batch's input keys of a benchmark setting."""
    from medmtl.data.emotic import emotic_tasks
    from medmtl.models.emotic_2enc import EmoticTwoEncoder
    from medmtl.models.unet_vgg16 import UNetVGG16
    from medmtl.tasks import refuge_tasks

    if setting == "emotic26":
        return emotic_tasks("26task"), lambda tasks: EmoticTwoEncoder(tasks, backbone=backbone), ("context", "body")
    return refuge_tasks(), lambda tasks: UNetVGG16(tasks, width=width, dropout=dropout), ("image",)


def build(
    name: str,
    width: float,
    mode: str | None,
    dropout: float = 0.8,
    extra: list[str] | None = None,
    setting: str = "refuge",
    backbone: str = "resnet18",
):
    from hydra.utils import instantiate

    from medmtl.catalogue import compose_train
    from medmtl.models import build_model

    overrides = [f"optim={name}"] + ([f"optim.strategy.mode={mode}"] if mode else []) + list(extra or [])
    cfg = compose_train(overrides)
    tasks, factory, input_keys = setting_tasks_and_model(setting, width, backbone, dropout)
    strategy = instantiate(cfg.optim.strategy)
    strategy.setup([t.name for t in tasks])
    model = build_model(factory, tasks, strategy.separate_networks)
    return model, strategy, tasks, instantiate(cfg.optim.optimizer), input_keys


def torchjd_step_factory(aggregator_name: str, model, tasks, optimizer):
    """torchjd's documented path: autojac.backward on the losses, then jac_to_grad on the shared
    parameters with the aggregator, heads by a plain backward (as in our strategies)."""
    import torch
    import torchjd.aggregation as aggregation
    from torchjd.autojac import backward, jac_to_grad

    aggregator = getattr(aggregation, aggregator_name)()
    shared = model.shared_parameters()

    def step(batch):
        outputs = model(batch["image"])
        losses = torch.stack([t.compute_loss(outputs[t.name], batch) for t in tasks])
        optimizer.zero_grad(set_to_none=True)
        heads = [p for t in tasks for p in model.head_parameters(t.name)]
        torch.autograd.backward(losses.sum(), inputs=heads, retain_graph=True)
        backward(losses, inputs=shared)
        jac_to_grad(shared, aggregator)
        optimizer.step()

    return step


def libmtl_step_factory(name: str, model, tasks, optimizer, device):
    """LibMTL's documented use: its weighting's ``backward(losses)`` loops over the tasks with one
    full backward each and writes the combined gradient of the shared parameters."""
    import types

    import torch
    import torch.hub

    # LibMTL 1.1.5 (the PyPI release) imports torchvision.models.utils, removed from torchvision
    # since; the one function it takes from there lives in torch.hub
    sys.modules.setdefault(
        "torchvision.models.utils", types.SimpleNamespace(load_state_dict_from_url=torch.hub.load_state_dict_from_url)
    )
    import LibMTL.weighting as weighting

    class_name, kwargs = LIBMTL_REFERENCE[name]
    shared = model.shared_parameters()

    class Adapter(getattr(weighting, class_name)):
        def __init__(self):
            super().__init__()
            self.task_num, self.device, self.rep_grad = len(tasks), device, False

        def get_share_params(self):
            return shared

        def zero_grad_share_params(self):
            for p in shared:
                if p.grad is not None:
                    p.grad.zero_()

    adapter = Adapter()
    adapter.init_param()

    def step(batch):
        outputs = model(batch["image"])
        losses = torch.stack([t.compute_loss(outputs[t.name], batch) for t in tasks])  # as LibMTL's trainer
        optimizer.zero_grad(set_to_none=False)
        adapter.backward(losses, **kwargs)
        optimizer.step()

    return step


def measure(args) -> dict:
    """Runs in a child process: time one strategy, report its peak memory."""
    import torch

    from medmtl.speed import SpeedOptions

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    name = args.strategy.removeprefix("torchjd:").removeprefix("libmtl:")
    extra = [f"optim.strategy.{option}" for option in args.option]
    model, strategy, tasks, optimizer_factory, input_keys = build(
        name, args.width, args.mode, extra=extra, setting=args.setting, backbone=args.backbone
    )
    model.to(device)
    speed = SpeedOptions(**{option: True for option in args.speed})
    speed.prepare(model)
    strategy.to(device)
    optimizers = strategy.configure_optimizers(model, optimizer_factory)
    batch = (random_person_batch if args.setting == "emotic26" else random_batch)(args.size, args.batch, device)
    batch = {key: speed.input(value) for key, value in batch.items()}
    if args.strategy.startswith("torchjd:"):
        step = torchjd_step_factory(TORCHJD_REFERENCE[name], model, tasks, optimizers[0])
    elif args.strategy.startswith("libmtl:"):
        step = libmtl_step_factory(name, model, tasks, optimizers[0], device)
    else:
        ctx = repeating_context(model, tasks, optimizers, batch, input_keys)
        step = lambda b: strategy.training_step(ctx, b)
    if args.bf16:
        plain_step = step

        def step(b):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                plain_step(b)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start_mb = torch.cuda.memory_allocated() / 2**20
    else:
        start_mb = resident_mb()
    for _ in range(args.warmup):
        step(batch)
    if getattr(strategy, "needs_linear_readout", False):
        for epoch in range(strategy.warmup_epochs):  # BayesAgg-MTL: time its own steps, past the plain-sum epochs
            strategy.on_train_epoch_end(epoch)
        step(batch)
    times = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        step(batch)
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20 - start_mb
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start_mb
    return {"seconds": statistics.median(times), "peak_mb": peak_mb}


def resident_mb() -> float:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(strategy: str, mode: str | None, args, options: tuple[str, ...] = ()) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--strategy",
        strategy,
        "--width",
        str(args.width),
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--setting",
        args.setting,
        "--backbone",
        args.backbone,
    ]
    if mode:
        command += ["--mode", mode]
    for option in options:
        command += ["--option", option]
    command += (["--speed", *args.speed] if args.speed else []) + (["--bf16"] if args.bf16 else [])
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"{strategy} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_here(strategy: str, mode: str | None, args, options: tuple[str, ...] = ()) -> dict:
    """:func:`measure` in this process (``--in-process``): no interpreter start and imports per row,
    which took about 30 s a row on a lent GPU machine. On CUDA the peak memory stays per row (the
    previous row's tensors are freed and the peak counter reset before it); on a CPU the resident
    set size cannot be, so CPU timings of memory keep to child processes."""
    import gc

    import torch

    result = measure(argparse.Namespace(**{**vars(args), "strategy": strategy, "mode": mode, "option": list(options)}))
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def row_label(strategy: str, mode: str | None, options: tuple[str, ...]) -> str:
    """``jd_upgrad (representation)``, ``pcgrad (batched)``, ``jd_upgrad (host solver)``..."""
    notes = [mode] if mode else []
    for option in options:
        key, value = option.split("=")
        notes.append({"solver": f"{value} solver", "warmup_iterations": "grouped", "chunks": f"{value} chunks"}.get(key, value))
    return strategy + "".join(f" ({note})" for note in notes)


def target_for(name: str, t: int, profiles: dict, mode: str | None = None) -> tuple[str, float | None]:
    """The speed target of a row: its mode (a variant row's, else the strategy's default)."""
    profile = profiles.get(name)
    mode = mode or (profile.mode if profile is not None else None)
    if mode == "representation":
        return "<= 1.3", 1.3
    if profile is not None and profile.double_sampling:
        # forwards: the batch and its two halves (2F); backwards: T per half (T full ones) and the update's
        return f"<= 1.1 x (2x{t}+4)/3", 1.1 * (2 * t + 4) / 3
    if mode == "jacobian":
        return f"<= 1.1 x (1+2x{t})/3", 1.1 * (1 + 2 * t) / 3
    if name == "mtl_io":
        return f"<= 1.05 x {t}", 1.05 * t
    return "", None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="vanilla")
    parser.add_argument("--mode", default=None)
    parser.add_argument("--option", action="append", default=[], help="key=value of optim.strategy (repeatable)")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="a subset of strategies")
    parser.add_argument("--setting", choices=("refuge", "emotic26"), default="refuge")
    parser.add_argument("--backbone", default="resnet18", help="emotic26: the encoders' timm ResNet")
    parser.add_argument("--speed", nargs="*", default=[], choices=("channels_last", "compile"), help="medmtl.speed options")
    parser.add_argument("--bf16", action="store_true", help="the steps under bf16 autocast (as trainer.precision=bf16-mixed)")
    parser.add_argument("--output", default=None, help="default: results/strategies.md (refuge), strategies_emotic26.md")
    parser.add_argument("--in-process", action="store_true", help="every row in this process (CUDA: memory stays per row)")
    args = parser.parse_args()
    if args.in_process and args.device == "cpu":
        parser.error("--in-process measures memory per row on CUDA only; on a CPU each row needs its own process")
    if args.child:
        print(json.dumps(measure(args)))
        return

    many = args.setting == "emotic26"
    t = 26 if many else 4
    output = Path(args.output or HERE / "results" / ("strategies_emotic26.md" if many else "strategies.md"))
    profiles = discovered_strategies()
    from medmtl.catalogue import needs_linear_readout

    # one network per task is not the point of a many-task timing (and would need 26 encoders pairs)
    # BayesAgg-MTL needs one linear head per task on a shared vector: the EMOTIC network only
    chosen = lambda s: (
        (not args.only or s in args.only)
        and not (many and s in profiles and profiles[s].separate_networks)
        and not (not many and s in profiles and needs_linear_readout(s))
    )
    runs: list[tuple[str, str | None, tuple[str, ...]]] = [(s, None, ()) for s in (args.only or profiles) if chosen(s)]
    runs += [(s, None, ("jacobian_method=batched",)) for s in ("pcgrad", "jd_upgrad", "mgda_ub") if chosen(s)]
    runs += [(s, None, ("solver=host",)) for s in HOST_SOLVER_VARIANTS if chosen(s)]
    runs += [(s, "gramian", ()) for s in GRAMIAN_VARIANTS if chosen(s)]
    runs += [(s, "representation", ()) for s in ("pcgrad", "jd_upgrad") if chosen(s)]
    # selective updates step once per task during their warm-up (the default row) and once per
    # group of the affinity map afterwards (this row: grouped from the second iteration on)
    runs += [(s, None, ("warmup_iterations=0",)) for s in ("sel_update",) if chosen(s)]
    # NTKMTL-SR: one chunk by default (the authors' NYUv2 script), four in their CelebA/Cityscapes scripts
    runs += [(s, None, ("chunks=4",)) for s in ("ntkmtl_sr",) if chosen(s)]
    if not many:  # the torchjd and LibMTL reference rows read one image input: REFUGE only
        runs += [(f"torchjd:{s}", None, ()) for s in TORCHJD_REFERENCE if chosen(s)]
        if importlib.util.find_spec("LibMTL") is not None:
            runs += [(f"libmtl:{s}", None, ()) for s in LIBMTL_REFERENCE if chosen(s)]
        else:
            print("LibMTL is not installed (pip install LibMTL): its rows are left out.")
    # the first child of a run was measured up to 1.5x slower than the same row later (files and
    # caches still cold): one vanilla child is run and discarded first, and vanilla is timed again
    # at the end, so that drift over the run shows beside the base row
    if "vanilla" in profiles and not args.in_process:
        run_child("vanilla", None, args, ())
    results = {}
    failed = []
    for strategy, mode, options in runs:
        label = row_label(strategy, mode, options)
        try:  # one row's error is reported with the table; the other rows still run
            results[label] = (run_here if args.in_process else run_child)(strategy, mode, args, options)
        except Exception as error:  # listed under the table and in the exit status
            failed.append(f"{label}: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}")
            print(f"{label:28s} FAILED {failed[-1]}", flush=True)
            continue
        print(f"{label:28s} {results[label]['seconds']:.4f} s  {results[label]['peak_mb']:.0f} MB", flush=True)
    if "vanilla" in results and len(results) > 1:
        results["vanilla (end of run)"] = (run_here if args.in_process else run_child)("vanilla", None, args, ())
    base = results["vanilla"]
    memory_kind = "allocated CUDA memory" if args.device != "cpu" else "the process resident set size"
    lines = [
        "# Strategies: seconds per training iteration relative to vanilla",
        "",
        (
            f"EMOTIC two-encoder network ({args.backbone}), two {args.size}x{args.size} inputs, batch {args.batch}, "
            f"T = {t} binary tasks (the 26 categories), "
            if many
            else f"U-Net VGG (width {args.width}), {args.size}x{args.size} images, batch {args.batch}, T = {t} tasks, "
        )
        + f"device {args.device}, {args.threads} threads, median of {args.repeats} after {args.warmup} warm-up "
        + "iterations; "
        + "".join(f"{option}; " for option in [*args.speed, *(["bf16 autocast"] if args.bf16 else [])])
        + f"peak memory = growth of {memory_kind} "
        "over the whole run above the model and batch (activations, gradients, optimizer states, workspace).",
        "",
        "| strategy | s / iteration | x vanilla | target | met | peak MB | x vanilla |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    for label, r in results.items():
        ratio = r["seconds"] / base["seconds"]
        name = label.split(" ")[0]
        mode = "representation" if "(representation)" in label else None
        text, bound = target_for(name, t, profiles, mode) if ":" not in name else ("", None)
        met = "" if bound is None else ("yes" if ratio <= bound else "no")
        target = f"{text} = {bound:.2f}" if bound else ""
        lines.append(
            f"| {label} | {r['seconds']:.4f} | {ratio:.2f} | {target} | {met} | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] / base['peak_mb']:.2f} |"
        )
    if failed:
        lines += ["", "Failed rows:", *(f"- {line}" for line in failed)]
    table = "\n".join(lines) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table)
    print()
    print(table)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
