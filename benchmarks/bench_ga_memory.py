"""Peak memory and seconds per optimisation step of gradient accumulation (GA) versus joint
training, for 2, 4, 8 and 12 tasks (Schafer et al. 2024; issue "MedMNIST the UMedPT way").

    python benchmarks/bench_ga_memory.py [--encoder resnet18] [--size 64] [--batch 32] [--steps 5]

Same UMedPT network (layer norm without affine parameters), T binary tasks, the same per-task
batch size. GA: for each task, forward its own batch, backward (its activations are freed), then
one step. Joint: one forward over the T batches concatenated, the summed per-task losses, one
backward, one step. Each (mode, T) runs in its own process, so its peak memory is its own: the max
resident set size on CPU (minus the resident size once the model, optimizer state and batches
exist), or ``torch.cuda.max_memory_allocated`` on CUDA. "Peak" is counted from just before the
model is built (the interpreter and torch itself are left out): parameters, gradients, optimizer
state, batches and activations; "activations" from after a first step (state allocated).
Target: GA's peak grows by at most 15 % from 2 to 12 tasks.

Writes ``benchmarks/results/ga_memory[_<device>].md`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

TASK_COUNTS = (2, 4, 8, 12)


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(mode: str, n_tasks: int, encoder: str, size: int, batch: int, steps: int, device_name: str) -> dict:
    import torch

    from medmtl import losses
    from medmtl.models.umedpt import UMedPT
    from medmtl.tasks import Task

    torch.manual_seed(0)
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.init()
    before_model = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_mb(device)
    tasks = [Task(f"task{k}", "binary", losses.binary_cross_entropy) for k in range(n_tasks)]
    model = UMedPT(tasks, backbone=encoder).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [
        (torch.rand(batch, 3, size, size, device=device), torch.randint(0, 2, (batch,), device=device).float()) for _ in tasks
    ]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if mode == "ga":
            for task, (x, y) in zip(tasks, batches):
                task.loss(model(x, [task.name])[task.name], y).mean().backward()
        else:
            outputs = model(torch.cat([x for x, _ in batches]))
            total = sum(
                task.loss(outputs[task.name][k * batch : (k + 1) * batch], y).mean()
                for k, (task, (_, y)) in enumerate(zip(tasks, batches))
            )
            total.backward()
        optimizer.step()

    step()  # optimizer state allocated, allocator warm
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        durations.append(time.perf_counter() - start)
    peak = _peak_mb(device)
    return {
        "mode": mode,
        "tasks": n_tasks,
        "peak_mb": peak - before_model,
        "activation_mb": peak - base,
        "seconds_per_step": statistics.median(durations),
    }


def table(rows: list[dict], args, device: str) -> str:
    by = {(r["mode"], r["tasks"]): r for r in rows}
    lines = [
        f"# GA vs joint training: memory and time per step ({device})",
        "",
        f"UMedPT `{args.encoder}` (layer norm, no affine), {args.size} px, batch {args.batch} per task, "
        f"median of {args.steps} steps; peak = {'max allocated' if device.startswith('cuda') else 'max RSS'} "
        "of the step's process, counted from just before the model is built.",
        "",
        "| tasks | GA peak (MB) | joint peak (MB) | GA activations (MB) | joint activations (MB) | GA s/step | joint s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in TASK_COUNTS:
        ga, joint = by[("ga", t)], by[("joint", t)]
        lines.append(
            f"| {t} | {ga['peak_mb']:.0f} | {joint['peak_mb']:.0f} | {ga['activation_mb']:.0f} | "
            f"{joint['activation_mb']:.0f} | {ga['seconds_per_step']:.3f} | {joint['seconds_per_step']:.3f} |"
        )
    growth = by[("ga", TASK_COUNTS[-1])]["peak_mb"] / by[("ga", TASK_COUNTS[0])]["peak_mb"] - 1
    joint_growth = by[("joint", TASK_COUNTS[-1])]["peak_mb"] / by[("joint", TASK_COUNTS[0])]["peak_mb"] - 1
    verdict = "met" if growth <= 0.15 else "missed"
    lines += [
        "",
        f"GA peak growth from {TASK_COUNTS[0]} to {TASK_COUNTS[-1]} tasks: {100 * growth:+.1f} % "
        f"(target <= +15 %: {verdict}); joint training: {100 * joint_growth:+.1f} %.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        mode, n_tasks = args.child.split(":")
        print(json.dumps(measure(mode, int(n_tasks), args.encoder, args.size, args.batch, args.steps, device)))
        return
    rows = []
    for n_tasks in TASK_COUNTS:
        for mode in ("ga", "joint"):
            command = [
                sys.executable,
                __file__,
                "--child",
                f"{mode}:{n_tasks}",
                "--encoder",
                args.encoder,
                "--size",
                str(args.size),
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--device",
                device,
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    text = table(rows, args, device)
    suffix = "" if device == "cpu" else f"_{torch.cuda.get_device_name(0).split()[-1].lower()}"
    output = HERE / "results" / f"ga_memory{suffix}.md"
    output.parent.mkdir(exist_ok=True)
    output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
