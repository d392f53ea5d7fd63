"""A synthetic MNIST in the official layout (``MNIST/raw/*-ubyte.gz``, torchvision's folder), read
by the same reader and composed into MultiMNIST pairs exactly as the real files are.

Each of the ten classes is a fixed figure of three random strokes (drawn once from ``seed``); a
sample is its class's figure shifted by up to 3 pixels, with a random stroke brightness and a
little noise, on the 28 x 28 grid of MNIST. The classes are separable, so a short training run
must learn both digits of a pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medmtl.data import mnist_idx
from medmtl.data.multimnist import MultiMNISTDataModule
from medmtl.data.synthetic import write_once

MARKER = ".synthetic_mnist.json"


def class_figures(rng: np.random.Generator, classes: int = 10, size: int = 28) -> np.ndarray:
    """(classes, size, size) float figures in [0, 1]: three thick strokes each, inside the centre 20 x 20."""
    figures = np.zeros((classes, size, size))
    grid = np.arange(size)
    for figure in figures:
        for _ in range(3):
            (r0, c0), (r1, c1) = rng.uniform(6, size - 6, size=(2, 2))
            for t in np.linspace(0, 1, 40):
                r, c = r0 + t * (r1 - r0), c0 + t * (c1 - c0)
                figure += np.exp(-((grid[:, None] - r) ** 2 + (grid[None, :] - c) ** 2) / 2.0) * 0.2
    return np.clip(figures, 0, 1)


def samples(rng: np.random.Generator, figures: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(figures), size=count)
    images = np.empty((count, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        shifted = np.roll(figures[label], tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        noisy = shifted * rng.uniform(0.7, 1.0) + rng.normal(0, 0.03, size=shifted.shape)
        images[i] = (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)
    return images, labels


def write_synthetic_mnist(root: str | Path, n_train: int = 1200, n_test: int = 300, seed: int = 0) -> Path:
    """Write the twin under ``root/MNIST/raw`` once (same parameters again: nothing is written)."""

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        figures = class_figures(rng)
        raw = folder / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for split, count in (("train", n_train), ("test", n_test)):
            mnist_idx.write_idx(raw, split, *samples(rng, figures, count))

    spec = {"n_train": n_train, "n_test": n_test, "seed": seed}
    return write_once(root, MARKER, "medmtl.data.multimnist_synthetic", spec, write)


class SyntheticMultiMNISTDataModule(MultiMNISTDataModule):
    """:class:`MultiMNISTDataModule` over a generated MNIST in the official layout (written on first use)."""

    def __init__(self, root: str, synthetic: dict | None = None, **kwargs):
        super().__init__(root, **kwargs)
        self.synthetic = dict(synthetic or {})

    def prepare_data(self) -> None:
        write_synthetic_mnist(self.root, **self.synthetic)
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        super().setup(stage)


__all__ = ["SyntheticMultiMNISTDataModule", "write_synthetic_mnist"]
