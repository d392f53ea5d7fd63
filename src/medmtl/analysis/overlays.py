"""Segmentation overlays with fovea points (Pascal et al. 2022, Fig. 4), from the examples runs keep.

Each run's ``predictions.npz`` holds a few test images whole (``example_*``: input, ground-truth
and post-processed predicted OD/OC masks, fovea points; see ``RefugeEvaluator``). The figure
puts several methods side by side on one image: the image with the ground-truth fovea (red) and
each method's predicted fovea, then the ground-truth masks, then each method's masks (OD green,
OC yellow). By default the image is the glaucomatous example on which the methods' mean Dice
differ most (the paper shows such a challenging case).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmtl.analysis import idrid_overlays, scene_overlays
from medmtl.analysis.figures import plt, save_figure
from medmtl.metrics.refuge import dice

OD_COLOUR, OC_COLOUR = np.array([0.1, 0.8, 0.2]), np.array([1.0, 0.85, 0.0])
FOVEA_TRUE_COLOUR = "red"
FOVEA_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:cyan")


def load_examples(folder: Path) -> dict[str, np.ndarray] | None:
    path = Path(folder) / "predictions.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        examples = {k.removeprefix("example_"): data[k] for k in data.files if k.startswith("example_")}
    return examples or None


def mask_overlay(image: np.ndarray, od: np.ndarray, oc: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with OD tinted green and OC yellow; float RGB in [0, 1]."""
    rgb = image.astype(np.float64) / 255.0
    for mask, colour in ((od, OD_COLOUR), (oc, OC_COLOUR)):
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
    return rgb


def _mark(rgb: np.ndarray, xy: Sequence[float], colour: Sequence[float], radius: int = 2) -> None:
    h, w = rgb.shape[:2]
    x, y = int(round(float(xy[0]))), int(round(float(xy[1])))
    rgb[max(0, y - radius) : min(h, y + radius + 1), max(0, x - radius) : min(w, x + radius + 1)] = colour


def example_panels(examples: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One image per kept example of one run: ground truth | prediction, masks tinted, fovea
    marked (ground truth red, prediction blue); uint8 RGB (W&B reads float arrays as 0-255)."""
    panels = []
    for i in range(len(examples["index"])):
        truth = mask_overlay(examples["image"][i], examples["od_true"][i], examples["oc_true"][i])
        predicted = mask_overlay(examples["image"][i], examples["od_pred"][i], examples["oc_pred"][i])
        for rgb in (truth, predicted):
            _mark(rgb, examples["fovea_true"][i], (1.0, 0.0, 0.0))
        _mark(predicted, examples["fovea_pred"][i], (0.0, 0.3, 1.0))
        panels.append((np.concatenate([truth, predicted], axis=1) * 255).round().astype(np.uint8))
    return panels


def pick_example(examples: dict[str, dict[str, np.ndarray]]) -> int:
    """Position of the glaucomatous example (any example if none) where the methods' mean Dice
    (OD and OC) differ most."""
    first = next(iter(examples.values()))
    candidates = [i for i, label in enumerate(first["label"]) if label == 1] or list(range(len(first["label"])))

    def spread(i: int) -> float:
        scores = [
            (dice(e["od_pred"][i], e["od_true"][i]) + dice(e["oc_pred"][i], e["oc_true"][i])) / 2 for e in examples.values()
        ]
        return max(scores) - min(scores)

    return max(candidates, key=spread)


def plot_overlay(examples: dict[str, dict[str, np.ndarray]], output: str | Path, position: int | None = None) -> Path:
    """``examples``: method -> that run's example arrays (the same images in the same order)."""
    methods = list(examples)
    indices = {tuple(e["index"]) for e in examples.values()}
    if len(indices) != 1:
        raise ValueError("The runs kept different example images; overlays need the same test set.")
    i = pick_example(examples) if position is None else position
    reference = examples[methods[0]]
    image = reference["image"][i]
    fig, axes = plt.subplots(1, 2 + len(methods), figsize=(3.2 * (2 + len(methods)), 3.4))
    axes[0].imshow(image)
    x, y = reference["fovea_true"][i]
    axes[0].scatter([x], [y], s=30, c=FOVEA_TRUE_COLOUR, label="ground truth")
    for method, colour in zip(methods, FOVEA_COLOURS):
        px, py = examples[method]["fovea_pred"][i]
        axes[0].scatter([px], [py], s=30, c=colour, label=method)
    axes[0].legend(fontsize="x-small", loc="lower left")
    axes[0].set_title(f"test image {int(reference['index'][i])} (label {int(reference['label'][i])})", fontsize="small")
    axes[1].imshow(mask_overlay(image, reference["od_true"][i], reference["oc_true"][i]))
    axes[1].set_title("ground truth", fontsize="small")
    for ax, method in zip(axes[2:], methods):
        e = examples[method]
        ax.imshow(mask_overlay(image, e["od_pred"][i], e["oc_pred"][i]))
        ax.set_title(
            f"{method}\nDice OD {dice(e['od_pred'][i], e['od_true'][i]):.3f}, OC {dice(e['oc_pred'][i], e['oc_true'][i]):.3f}",
            fontsize="small",
        )
    for ax in axes:
        ax.set_axis_off()
    return save_figure(fig, output)


def panels_with_captions(examples: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
    """Ground truth | prediction images of one run's examples, REFUGE, IDRiD or scenes, with captions."""
    if idrid_overlays.is_idrid_examples(examples):
        return idrid_overlays.example_panels(examples), idrid_overlays.example_captions(examples)
    if scene_overlays.is_scene_examples(examples):
        return scene_overlays.example_panels(examples), scene_overlays.example_captions(examples)
    captions = [f"test image {int(i)}, label {int(y)}" for i, y in zip(examples["index"], examples["label"])]
    return example_panels(examples), captions


def overlay_from_runs(runs, methods: Sequence[str], output: str | Path) -> Path | None:
    """The overlay of ``methods`` on the first pair key (fold or seed) that all of them ran
    (IDRiD examples: Roy 2025's figures, :mod:`medmtl.analysis.idrid_overlays`; scene examples:
    :mod:`medmtl.analysis.scene_overlays`)."""
    by_key: dict[str, dict[str, Path]] = {}
    for run in runs:
        by_key.setdefault(run.pair_key, {})[run.method] = run.folder
    for key in sorted(by_key):
        if all(m in by_key[key] for m in methods):
            loaded = {m: load_examples(by_key[key][m]) for m in methods}
            examples = {m: e for m, e in loaded.items() if e is not None}
            if len(examples) == len(loaded):
                if all(idrid_overlays.is_idrid_examples(e) for e in examples.values()):
                    return idrid_overlays.plot_idrid_overlay(examples, output)
                if all(scene_overlays.is_scene_examples(e) for e in examples.values()):
                    return scene_overlays.plot_scene_overlay(examples, output)
                return plot_overlay(examples, output)
    return None
