"""Scene prediction figures (NYUDv2), from the examples a run keeps.

Each scene run's ``predictions.npz`` holds its first test images whole
(:class:`~medmtl.metrics.scene.SceneEvaluator`): the input and, per task, the prediction and the
ground truth. Each map is drawn as a picture: semantic labels in a fixed palette (unlabelled
black), depth with one colour scale per image (the ground truth's valid range; invalid black),
normals as RGB = (n + 1) / 2 (invalid black), edges as grey levels.

- :func:`example_panels`: per kept image, one strip "image | truth, prediction of each task"
  (W&B panels, the inspection notebook);
- :func:`plot_scene_overlay`: the report's figure: one row for the image and the ground truth,
  then one row per method with its predictions, on the first kept test image.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medmtl.analysis.figures import plt, save_figure

#: the scene tasks in drawing order, by the example keys' task names
TASK_ORDER = ("semseg", "depth", "normals", "edge")


def is_scene_examples(examples: Mapping[str, np.ndarray]) -> bool:
    return any(f"{task}_pred" in examples for task in TASK_ORDER)


def scene_tasks(examples: Mapping[str, np.ndarray]) -> list[str]:
    return [task for task in TASK_ORDER if f"{task}_pred" in examples]


def _palette(classes: int) -> np.ndarray:
    """A fixed colour per class (the same in every figure), black for unlabelled."""
    colours = plt.get_cmap("tab20")(np.arange(20))[:, :3]
    extra = np.random.default_rng(0).uniform(0.15, 0.95, size=(max(0, classes - 20), 3))
    return np.concatenate([colours, extra])


def to_rgb(task: str, values: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """One map as float RGB (H, W, 3) in [0, 1]; ``truth`` sets validity and the depth range."""
    if task == "semseg":
        labels = values.astype(np.int64)
        palette = _palette(int(max(labels.max(initial=0), truth.max(initial=0))) + 1)
        rgb = palette[np.clip(labels, 0, None)]
        rgb[labels < 0] = 0.0
        return rgb
    if task == "depth":
        valid = truth > 0
        low, high = (truth[valid].min(), truth[valid].max()) if valid.any() else (0.0, 1.0)
        scaled = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
        rgb = plt.get_cmap("viridis")(scaled)[..., :3]
        rgb[~valid] = 0.0
        return rgb
    if task == "normals":
        rgb = np.clip((np.moveaxis(values, 0, -1) + 1.0) / 2.0, 0.0, 1.0)
        rgb[np.abs(truth).sum(0) == 0] = 0.0
        return rgb
    return np.repeat(np.clip(values, 0.0, 1.0)[..., None], 3, axis=-1)


def example_panels(examples: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """One uint8 strip per kept image: the image, then truth and prediction of each task."""
    panels = []
    for i, image in enumerate(examples["image"]):
        pieces = [image.astype(np.float64) / 255.0]
        for task in scene_tasks(examples):
            truth = examples[f"{task}_true"][i]
            pieces += [to_rgb(task, truth, truth), to_rgb(task, examples[f"{task}_pred"][i], truth)]
        panels.append((np.concatenate(pieces, axis=1) * 255).round().astype(np.uint8))
    return panels


def example_captions(examples: Mapping[str, np.ndarray]) -> list[str]:
    order = ", ".join(f"{task} truth | prediction" for task in scene_tasks(examples))
    return [f"test image {int(index)}: image | {order}" for index in examples["index"]]


def plot_scene_overlay(by_method: Mapping[str, Mapping[str, np.ndarray]], output: str | Path) -> Path:
    """``by_method``: method -> that run's examples. Row 0: the first kept test image and its
    ground truth; then one row per method with its predictions of the same image."""
    methods = list(by_method)
    reference = by_method[methods[0]]
    tasks = scene_tasks(reference)
    fig, axes = plt.subplots(
        1 + len(methods), 1 + len(tasks), figsize=(2.6 * (1 + len(tasks)), 2.2 * (1 + len(methods))), squeeze=False
    )
    axes[0, 0].imshow(reference["image"][0])
    axes[0, 0].set_title(f"test image {int(reference['index'][0])}", fontsize="small")
    for column, task in enumerate(tasks, start=1):
        truth = reference[f"{task}_true"][0]
        axes[0, column].imshow(to_rgb(task, truth, truth))
        axes[0, column].set_title(f"{task}: ground truth", fontsize="small")
    for row, method in enumerate(methods, start=1):
        examples = by_method[method]
        axes[row, 0].text(0.5, 0.5, method, ha="center", va="center", fontsize="small", wrap=True)
        for column, task in enumerate(tasks, start=1):
            if f"{task}_pred" in examples:
                axes[row, column].imshow(to_rgb(task, examples[f"{task}_pred"][0], reference[f"{task}_true"][0]))
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, output)
