"""A synthetic NYUDv2 whose depth, normals, labels and edges are exact, in either official layout.

Each scene is ray-cast: a pinhole camera (focal length ``0.8 x width`` pixels, principal point at
the centre; camera coordinates x right, y down, z forward) in a room made of a floor (y = +h),
a ceiling (y = -h'), side walls (x = +-w) and a back wall (z = d), with two to four axis-aligned
boxes standing on the floor. For pixel (u, v) the ray is r = ((u + 0.5 - cx) / f, (v + 0.5 - cy) / f,
1); the nearest surface hit at parameter t gives

- depth = t (the z coordinate of the hit point, since r_z = 1), in metres;
- the surface's normal in camera coordinates, facing the camera (a unit vector: exact);
- its semantic class (floor, ceiling, wall, back wall and one class per box);
- edges: pixels whose class differs from a 4-neighbour's (semantic boundaries, the way
  NYUD edge maps are derived from the segmentation).

So every pixel obeys its surface's plane equation n . X = c with X = depth x r (floor:
n = (0, -1, 0), c = -h), which the tests check. The image is the class colour shaded by
max(0, n . l) for a fixed light direction l, with a little noise, in [0, 1]. Real sensor defects
are imitated: one elliptic hole per image where depth and normals are 0 (invalid) and the label
is unlabelled.

Written in the ``mtan`` layout (``{train,val}/{image,label,depth,normal}/<i>.npy``, 13 classes) or
the ``nyud_mt`` layout (``gt_sets``, jpg, 8-bit png labels with 0 = void, npy depth, normals,
edges; 40 classes) with the same encodings as the releases; the size is a parameter (the
releases are 288 x 384 and 480 x 640; tests use small images).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from medmtl.data.nyudv2 import NYUDv2DataModule
from medmtl.data.nyudv2_layout import CLASSES, LAYOUTS
from medmtl.data.synthetic import write_once
from medmtl.errors import ConfigError

log = logging.getLogger(__name__)

MARKER = ".synthetic_nyudv2.json"
#: surface -> class in each layout (box classes are drawn from the rest)
SURFACE_CLASS = {
    "mtan": {"floor": 4, "ceiling": 3, "wall": 11, "back": 11},
    "nyud_mt": {"floor": 1, "ceiling": 21, "wall": 0, "back": 0},
}
BOX_CLASSES = {"mtan": (0, 1, 2, 5, 6, 7, 8, 9, 10, 12), "nyud_mt": (2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14)}
LIGHT = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])


def camera_rays(height: int, width: int) -> np.ndarray:
    """(H, W, 3) rays r = ((u + 0.5 - cx) / f, (v + 0.5 - cy) / f, 1) of the twin's pinhole camera
    (f = 0.8 width, principal point at the centre): a pixel of depth d sees the point d r."""
    f = 0.8 * width
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([(u + 0.5 - width / 2) / f, (v + 0.5 - height / 2) / f, np.ones_like(u)], axis=-1)


def render_scene(rng: np.random.Generator, height: int, width: int, layout: str) -> dict[str, np.ndarray]:
    """One scene: image (H, W, 3) in [0, 1], semseg (H, W) (-1 unlabelled), depth (H, W) (0
    invalid), normals (H, W, 3) (0 invalid), edge (H, W) {0, 1}. See the module docstring."""
    rays = camera_rays(height, width)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    floor_y, ceiling_y = rng.uniform(1.2, 1.6), -rng.uniform(1.4, 1.8)
    side_x, back_z = rng.uniform(2.0, 3.0), rng.uniform(4.5, 7.0)
    classes = SURFACE_CLASS[layout]
    planes = [  # (axis, position, normal facing the camera, class)
        (1, floor_y, (0.0, -1.0, 0.0), classes["floor"]),
        (1, ceiling_y, (0.0, 1.0, 0.0), classes["ceiling"]),
        (0, -side_x, (1.0, 0.0, 0.0), classes["wall"]),
        (0, side_x, (-1.0, 0.0, 0.0), classes["wall"]),
        (2, back_z, (0.0, 0.0, -1.0), classes["back"]),
    ]
    best_t = np.full((height, width), np.inf)
    normal = np.zeros((height, width, 3))
    label = np.full((height, width), -1, dtype=np.int64)

    def take(t: np.ndarray, n: np.ndarray | tuple, cls: int) -> None:
        closer = (t > 1e-6) & (t < best_t)
        best_t[closer] = t[closer]
        normal[closer] = n if isinstance(n, tuple) else n[closer]
        label[closer] = cls

    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, position, n, cls in planes:
            take(position / rays[..., axis], n, cls)
        box_classes = rng.choice(BOX_CLASSES[layout], size=int(rng.integers(2, 5)), replace=False)
        for cls in box_classes:
            size = rng.uniform([0.4, 0.3, 0.4], [1.2, 1.2, 1.2])
            centre = np.array(
                [
                    rng.uniform(-side_x + size[0], side_x - size[0]),
                    floor_y - size[1] / 2,
                    rng.uniform(2.5, back_z - size[2] - 0.2),
                ]
            )
            low, high = centre - size / 2, centre + size / 2
            t1, t2 = low / rays, high / rays  # slab method (the ray starts at the origin)
            t_near, t_far = np.minimum(t1, t2), np.maximum(t1, t2)
            entry, exit_ = t_near.max(axis=-1), t_far.min(axis=-1)
            hit = (entry <= exit_) & (entry > 0)
            face = t_near.argmax(axis=-1)  # the slab entered last is the face hit
            sign = -np.sign(rays[np.arange(height)[:, None], np.arange(width)[None, :], face])
            box_normal = np.zeros((height, width, 3))
            np.put_along_axis(box_normal, face[..., None], sign[..., None], axis=-1)
            take(np.where(hit, entry, np.inf), box_normal, int(cls))
    depth = best_t  # r_z = 1: the ray parameter is the z coordinate
    edge = np.zeros((height, width), dtype=np.float32)
    edge[:, 1:] = np.maximum(edge[:, 1:], label[:, 1:] != label[:, :-1])
    edge[:, :-1] = np.maximum(edge[:, :-1], label[:, :-1] != label[:, 1:])
    edge[1:, :] = np.maximum(edge[1:, :], label[1:, :] != label[:-1, :])
    edge[:-1, :] = np.maximum(edge[:-1, :], label[:-1, :] != label[1:, :])
    palette = np.random.default_rng(7).uniform(0.2, 0.95, size=(64, 3))  # the same class colours in every scene
    shading = 0.35 + 0.65 * np.clip((normal * LIGHT).sum(-1), 0.0, 1.0)
    image = palette[label] * shading[..., None] / np.maximum(1.0, depth[..., None] / 6.0)
    image = np.clip(image + rng.normal(0.0, 0.02, image.shape), 0.0, 1.0)
    hole = ((u - rng.uniform(0, width)) / (0.08 * width)) ** 2 + ((v - rng.uniform(0, height)) / (0.06 * height)) ** 2 < 1
    depth, normal, label = depth.copy(), normal.copy(), label.copy()
    depth[hole], normal[hole], label[hole] = 0.0, 0.0, -1
    return {
        "image": image.astype(np.float32),
        "semseg": label,
        "depth": depth.astype(np.float32),
        "normals": normal.astype(np.float32),
        "edge": edge,
    }


def _write_mtan(root: Path, split: str, index: int, scene: dict[str, np.ndarray]) -> None:
    files = {
        "image": scene["image"],
        "label": scene["semseg"].astype(np.float32),
        "depth": scene["depth"][..., None],
        "normal": scene["normals"],
    }
    for folder, value in files.items():
        path = root / split / folder / f"{index}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, value)


def _write_nyud_mt(root: Path, name: str, scene: dict[str, np.ndarray]) -> None:
    for folder in ("images", "segmentation", "depth", "normals", "edge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray((scene["image"] * 255).round().astype(np.uint8)).save(root / "images" / f"{name}.jpg", quality=95)
    Image.fromarray((scene["semseg"] + 1).astype(np.uint8)).save(root / "segmentation" / f"{name}.png")  # 0 = void
    np.save(root / "depth" / f"{name}.npy", scene["depth"])
    np.save(root / "normals" / f"{name}.npy", scene["normals"])
    np.save(root / "edge" / f"{name}.npy", scene["edge"])


def write_synthetic_nyudv2(
    root: str | Path, layout: str = "mtan", n_train: int = 32, n_val: int = 16, size: Sequence[int] = (288, 384), seed: int = 0
) -> Path:
    """Write the twin under ``root`` once (atomically: :func:`medmtl.data.synthetic.write_once`)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"data.synthetic.layout must be one of {LAYOUTS}, got {layout!r}.")
    height, width = int(size[0]), int(size[1])
    spec = {"layout": layout, "n_train": n_train, "n_val": n_val, "size": [height, width], "seed": seed}

    def write(target: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, count in (("train", n_train), ("val", n_val)):
            names = []
            for index in range(count):
                scene = render_scene(rng, height, width, layout)
                if layout == "mtan":
                    _write_mtan(target, split, index, scene)
                else:
                    names.append(f"{split}_{index:04d}")
                    _write_nyud_mt(target, names[-1], scene)
            if layout == "nyud_mt":
                (target / "gt_sets").mkdir(parents=True, exist_ok=True)
                (target / "gt_sets" / f"{split}.txt").write_text("\n".join(names) + "\n")
        log.info("Synthetic NYUDv2 (%s layout, %d + %d scenes of %dx%d) written.", layout, n_train, n_val, height, width)

    return write_once(root, MARKER, "medmtl.data.nyudv2_synthetic", spec, write)


class SyntheticNYUDv2DataModule(NYUDv2DataModule):
    """:class:`NYUDv2DataModule` over a generated twin (written on first use) in ``layout``
    (``auto`` writes the ``mtan`` layout), so that an experiment's ``data.layout`` chooses the
    same task set on the twin and on the real dataset."""

    def __init__(self, root: str, synthetic: dict | None = None, layout: str = "mtan", **kwargs):
        layout = "mtan" if layout == "auto" else layout
        super().__init__(root, layout=layout, **kwargs)
        self.synthetic = {**dict(synthetic or {}), "layout": layout}

    def prepare_data(self) -> None:
        write_synthetic_nyudv2(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        super().setup(stage)


__all__ = ["CLASSES", "SyntheticNYUDv2DataModule", "camera_rays", "render_scene", "write_synthetic_nyudv2"]
