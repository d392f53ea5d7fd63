"""The two NYUDv2 layouts in common use, read as they are distributed, every file checked.

``mtan`` (Liu et al. 2019's preprocessed release): ``{train,val}/{image,label,depth,normal}/<i>.npy``
at 288 x 384; ``image`` (H, W, 3) float in [0, 1], ``label`` (H, W) with 13 classes 0..12 and -1 =
unlabelled, ``depth`` (H, W) or (H, W, 1) in metres, ``normal`` (H, W, 3) in [-1, 1]; depth or
normal equal to 0 marks an invalid pixel. Tasks: semantic segmentation (13 classes), depth,
normals.

``nyud_mt`` (the release of Vandenhende et al. 2022's code): ``gt_sets/{train,val}.txt`` (image ids),
``images/<id>.jpg``, ``segmentation/<id>.png`` (0 = void, read as unlabelled; 1..40 shifted to the
40 classes 0..39), ``depth/<id>.npy``, ``normals/<id>.npy`` (H, W, 3), ``edge/<id>.npy`` (H, W,
{0, 1}). Tasks: the same three and edges.

Both have a training split of 795 images and a ``val`` split of 654 (the official test images,
on which the papers report). :func:`read_sample` returns float32 / int64 arrays in one convention
(semantic -1 = unlabelled, depth 0 = invalid, normals (3, H, W), edges {0, 1}) and refuses a
file that is missing, unreadable, of another shape than its image, or whose values are outside
their range, naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmtl.data.errors import DatasetError
from medmtl.data.images import read_index_image, read_rgb

LAYOUTS = ("mtan", "nyud_mt")
SPLITS = ("train", "val")
#: per layout: the classes of the semantic task and the tasks its files provide
CLASSES = {"mtan": 13, "nyud_mt": 40}
LAYOUT_TASKS = {"mtan": ("semseg", "depth", "normals"), "nyud_mt": ("semseg", "depth", "normals", "edge")}
MTAN_FOLDERS = {"image": "image", "semseg": "label", "depth": "depth", "normals": "normal"}
NYUD_MT_FOLDERS = {
    "image": ("images", ".jpg"),
    "semseg": ("segmentation", ".png"),
    "depth": ("depth", ".npy"),
    "normals": ("normals", ".npy"),
    "edge": ("edge", ".npy"),
}


@dataclass(frozen=True)
class NyudSample:
    id: str
    split: str
    files: dict[str, Path]  # "image" and each task -> its file


def detect_layout(root: Path) -> str:
    if (root / "train" / "image").is_dir():
        return "mtan"
    if (root / "gt_sets").is_dir():
        return "nyud_mt"
    raise DatasetError(
        f"No NYUDv2 layout found under {root}: expected train/image/*.npy (the MTAN layout) or gt_sets/train.txt "
        "(the NYUD_MT layout). Set data.root to the folder that holds one, or use data=nyudv2_synthetic."
    )


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"NYUDv2 file missing: {path}.")
    return path


def scan_nyudv2(root: str | Path, layout: str, split: str, tasks: Sequence[str]) -> list[NyudSample]:
    """Every sample of ``split`` with the files of the image and of ``tasks``, all checked to exist."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"NYUDv2 root folder not found: {root}. Set data.root, or use data=nyudv2_synthetic.")
    unknown = [t for t in tasks if t not in LAYOUT_TASKS[layout]]
    if unknown:
        raise DatasetError(f"The {layout} layout of NYUDv2 has no {unknown} annotations; it has {list(LAYOUT_TASKS[layout])}.")
    if layout == "mtan":
        folder = root / split / "image"
        if not folder.is_dir():
            raise DatasetError(f"NYUDv2 folder missing: {folder} (MTAN layout).")
        ids = sorted((p.stem for p in folder.glob("*.npy")), key=lambda s: (len(s), s))
        for key in tasks:
            labelled = {p.stem for p in (root / split / MTAN_FOLDERS[key]).glob("*.npy")}
            orphans = sorted(labelled - set(ids), key=lambda s: (len(s), s))
            if orphans:
                raise DatasetError(
                    f"NYUDv2 image missing: {folder / f'{orphans[0]}.npy'} ({len(orphans)} of the {key} files in "
                    f"{root / split / MTAN_FOLDERS[key]} have no image; the sample would be left out)."
                )
        return [
            NyudSample(i, split, {key: _require(root / split / MTAN_FOLDERS[key] / f"{i}.npy") for key in ("image", *tasks)})
            for i in ids
        ]
    listing = _require(root / "gt_sets" / f"{split}.txt")
    ids = [line.strip() for line in listing.read_text(encoding="utf-8-sig").splitlines() if line.strip()]  # a BOM is no id
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise DatasetError(f"{listing} lists the images {duplicated[:5]} more than once.")
    samples = []
    for i in ids:
        files = {}
        for key in ("image", *tasks):
            subfolder, suffix = NYUD_MT_FOLDERS[key]
            files[key] = _require(root / subfolder / f"{i}{suffix}")
        samples.append(NyudSample(i, split, files))
    return samples


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"Cannot read {path}: it is truncated or not a .npy array ({error}).") from None
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise DatasetError(f"{path} holds {array.dtype} values, not numbers.")
    return array


def _check(condition: bool, path: Path, problem: str) -> None:
    if not condition:
        raise DatasetError(f"{path}: {problem}.")


def read_sample(sample: NyudSample, layout: str) -> dict[str, np.ndarray]:
    """``image`` (H, W, 3) float32 in [0, 1] and each task's target in the common convention."""
    files = sample.files
    if layout == "mtan":
        image = _load_npy(files["image"]).astype(np.float32)
        _check(
            image.min(initial=0) >= 0,
            files["image"],
            f"the image has values down to {image.min():.3g}: the MTAN layout stores unnormalised images (in [0, 1] or "
            "0-255), and this one looks normalised already (it would be normalised twice)",
        )
        if image.max(initial=0) > 1.5:  # some copies store 0..255
            image = image / 255.0
    else:
        image = read_rgb(files["image"]).astype(np.float32) / 255.0
    _check(image.ndim == 3 and image.shape[2] == 3, files["image"], f"expected an (H, W, 3) image, found {image.shape}")
    _check(bool(np.isfinite(image).all()), files["image"], "the image has NaN or infinite values")
    height, width = image.shape[:2]
    out: dict[str, np.ndarray] = {"image": image}
    for task, path in files.items():
        if task == "image":
            continue
        if task == "semseg":
            if layout == "mtan":
                label = _load_npy(path)
                _check(bool(np.isfinite(label).all()), path, "labels must be finite")
                label = label.astype(np.int64)
            else:
                label = read_index_image(path).astype(np.int64) - 1  # 0 = void -> -1, 1..40 -> 0..39
            classes = CLASSES[layout]
            bad = label[(label < -1) | (label >= classes)]
            _check(bad.size == 0, path, f"labels {np.unique(bad)[:5].tolist()} are outside -1..{classes - 1}")
            value = label
        elif task == "depth":
            depth = _load_npy(path).astype(np.float32)
            depth = depth[..., 0] if depth.ndim == 3 and depth.shape[2] == 1 else depth
            _check(
                bool(np.isfinite(depth).all()) and depth.min(initial=0) >= 0, path, "depth must be finite and >= 0 (0 = invalid)"
            )
            value = depth
        elif task == "normals":
            normals = _load_npy(path).astype(np.float32)
            _check(normals.ndim == 3 and normals.shape[2] == 3, path, f"expected (H, W, 3) normals, found {normals.shape}")
            _check(
                bool(np.isfinite(normals).all()) and np.abs(normals).max(initial=0) <= 1.0 + 1e-3,
                path,
                "normal components must be finite and within [-1, 1]",
            )
            value = np.ascontiguousarray(normals.transpose(2, 0, 1))
        else:
            edge = _load_npy(path).astype(np.float32)
            edge = edge[..., 0] if edge.ndim == 3 else edge
            _check(bool(np.isin(edge, (0.0, 1.0)).all()), path, "edge maps must hold 0 and 1 only")
            value = edge
        _check(
            tuple(value.shape[-2:]) == (height, width),
            path,
            f"is {value.shape[-1]}x{value.shape[-2]}, its image {width}x{height}",
        )
        out[task] = value
    return out
