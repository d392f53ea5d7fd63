"""What Yang et al. 2023's 3D recipe for AdrenalMNIST3D would cost on this machine, as a ratio to
their 2D one.

    python benchmarks/bench_medmnist3d_cost.py [--threads 1] [--batch 32] [--repeats 2]

Their MedMNIST3D experiments take the CIFAR-style ResNet-18 of the 2D baselines (a 3x3 stride-1
first convolution, no max pool) and convert every layer to 3D ("ResNet-18 + 3D": 3x3x3 kernels,
3D batch norm and pooling), then train 100 epochs of batch 32 with Adam. This times one training
iteration (forward, backward, Adam step) of the 2D network on a batch of 28 x 28 images and of its
3D conversion on a batch of 28^3 volumes, and turns the 3D time into minutes per epoch of
AdrenalMNIST3D's 1,188 training volumes; likewise their "ResNet-18 + 2.5D" (1 x 3 x 3 kernels). The
conversion is the framework's (``medmtl.models.volumetric.to_3d``, ``model.dims=3``).

Writes ``benchmarks/results/medmnist3d_cost.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import resnet18

from medmtl.models.volumetric import to_3d

HERE = Path(__file__).resolve().parent
ADRENAL_TRAIN_VOLUMES = 1188
PAPER_EPOCHS = 100


def cifar_resnet18() -> nn.Module:
    """Yang et al.'s 2D network: ResNet-18 with a 3x3 stride-1 stem, no max pool, one grey channel."""
    net = resnet18(num_classes=2)
    net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


def seconds_per_iteration(net: nn.Module, inputs: torch.Tensor, repeats: int) -> float:
    """The mean over ``repeats`` iterations after one warm-up (3D iterations take seconds)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    labels = torch.randint(0, 2, (inputs.shape[0],))

    def step() -> None:
        loss = nn.functional.cross_entropy(net(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "results" / "medmnist3d_cost.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    two = seconds_per_iteration(cifar_resnet18(), torch.rand(args.batch, 1, 28, 28), args.repeats)
    volumes = torch.rand(args.batch, 1, 28, 28, 28)
    three = seconds_per_iteration(to_3d(cifar_resnet18(), conv="3d"), volumes, args.repeats)
    two_and_half = seconds_per_iteration(to_3d(cifar_resnet18(), conv="2.5d"), volumes, args.repeats)

    def epoch_and_run_time(seconds: float) -> str:
        minutes = ADRENAL_TRAIN_VOLUMES / args.batch * seconds / 60
        return f"{minutes:.1f} min per epoch, {minutes * PAPER_EPOCHS / 60:.1f} h for the paper's {PAPER_EPOCHS} epochs"

    table = (
        "# Yang et al. 2023's 3D recipe: cost on this machine\n\n"
        f"CIFAR-style ResNet-18, batch {args.batch}, {args.threads} thread(s), CPU, mean of {args.repeats} iterations after one"
        " warm-up (forward, backward, Adam step).\n\n"
        "| network | input | s / iteration | x 2D |\n|---|---|---:|---:|\n"
        f"| 2D (Yang et al.'s 28 px baseline) | 28 x 28 | {two:.3f} | 1.0 |\n"
        f'| 3D conversion ("ResNet-18 + 3D") | 28^3 | {three:.2f} | {three / two:.0f} |\n'
        f'| 2.5D conversion ("ResNet-18 + 2.5D") | 28^3 | {two_and_half:.2f} | {two_and_half / two:.0f} |\n\n'
        f"AdrenalMNIST3D ({ADRENAL_TRAIN_VOLUMES} training volumes), per run: 3D {epoch_and_run_time(three)}; "
        f"2.5D {epoch_and_run_time(two_and_half)}.\n"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
