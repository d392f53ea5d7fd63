"""MNIST's four IDX files, as LeCun, Cortes and Burges distribute them and torchvision lays them out.

``<root>/MNIST/raw/`` (torchvision), ``<root>/raw/`` or ``<root>/`` itself holds
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``). An IDX file is a big-endian header --
a magic number (2051 for images, 2049 for labels), the item count and, for images, rows and
columns -- then one unsigned byte per pixel or label. Every departure (a missing file, a wrong
magic number, a count that disagrees with the other file of the split, a file shorter or longer
than its header says, labels outside 0-9) is refused in one sentence naming the file. Nothing is
downloaded.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from medmtl.data.errors import DatasetError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
#: where a root may keep the files, first match wins
FOLDERS = ("MNIST/raw", "raw", ".")


def find(root: str | Path, name: str) -> Path:
    """The file ``name`` (plain or ``.gz``) under ``root``'s usual folders."""
    root = Path(root).expanduser()
    for folder in FOLDERS:
        for candidate in (root / folder / name, root / folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    searched = ", ".join(str(root / folder) for folder in FOLDERS)
    raise DatasetError(f"MNIST file {name} (or {name}.gz) not found in {searched}: set data.root to the folder of MNIST/raw.")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError) as error:  # a truncated or corrupt gzip stream
        raise DatasetError(f"MNIST file {path} cannot be read ({error}).") from error


def _header(data: bytes, path: Path, fields: int) -> list[int]:
    if len(data) < 4 * fields:
        raise DatasetError(f"MNIST file {path} is {len(data)} bytes long, shorter than its {4 * fields}-byte header.")
    return [int.from_bytes(data[4 * k : 4 * k + 4], "big") for k in range(fields)]


def read_images(path: Path) -> np.ndarray:
    """(N, rows, cols) uint8 from an IDX image file."""
    data = _read_bytes(path)
    magic, count, rows, cols = _header(data, path, 4)
    if magic != IMAGE_MAGIC:
        raise DatasetError(f"MNIST file {path} has magic number {magic}, not {IMAGE_MAGIC} (an IDX image file).")
    expected = 16 + count * rows * cols
    if len(data) != expected:
        shape = f"{count} x {rows} x {cols}"
        raise DatasetError(f"MNIST file {path} holds {len(data)} bytes where its header ({shape}) says {expected}.")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def read_labels(path: Path) -> np.ndarray:
    """(N,) int64 class indices from an IDX label file."""
    data = _read_bytes(path)
    magic, count = _header(data, path, 2)
    if magic != LABEL_MAGIC:
        raise DatasetError(f"MNIST file {path} has magic number {magic}, not {LABEL_MAGIC} (an IDX label file).")
    if len(data) != 8 + count:
        raise DatasetError(f"MNIST file {path} holds {len(data)} bytes where its header ({count} labels) says {8 + count}.")
    labels = np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)
    if labels.size and labels.max() > 9:
        raise DatasetError(f"MNIST file {path} has label {labels.max()}; digits are 0-9.")
    return labels


def read_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of ``split`` (``train`` or ``test``), checked to have equal counts."""
    image_file, label_file = (find(root, name) for name in FILES[split])
    images, labels = read_images(image_file), read_labels(label_file)
    if len(images) != len(labels):
        raise DatasetError(f"MNIST file {image_file} holds {len(images)} images but {label_file} {len(labels)} labels.")
    return images, labels


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write ``split``'s two files, gzipped, in the official format (the synthetic twin's writer)."""
    image_name, label_name = FILES[split]
    count, rows, cols = images.shape
    header = b"".join(v.to_bytes(4, "big") for v in (IMAGE_MAGIC, count, rows, cols))
    with gzip.open(folder / f"{image_name}.gz", "wb") as stream:
        stream.write(header + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{label_name}.gz", "wb") as stream:
        stream.write(LABEL_MAGIC.to_bytes(4, "big") + count.to_bytes(4, "big") + labels.astype(np.uint8).tobytes())


__all__ = ["FILES", "find", "read_images", "read_labels", "read_split", "write_idx"]
