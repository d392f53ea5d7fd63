"""IDRiD prediction figures (Roy 2025, Figs. 4-5), from the examples runs keep.

Each IDRiD run's ``predictions.npz`` holds a few test images whole (see
:class:`~medmtl.metrics.idrid.IdridEvaluator`): segmentation-set images (lesion masks, no grades)
and grading-set images (grades, no masks). One row per image: the ground truth (lesions tinted,
grades in the title, -1 where the image has none, as in Roy 2025's figures), then each method's
prediction. A method that was not evaluated on that image (a grading-only classifier on a
segmentation image) gets an empty panel that says so; a lesion whose mask the image lacks is
named in the ground-truth title.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medmtl.analysis.figures import plt, save_figure

#: Tint of each lesion (microaneurysms, haemorrhages, hard and soft exudates, optic disc).
LESION_COLOURS = {
    "ma": (0.1, 0.3, 1.0),
    "he": (0.6, 0.0, 0.6),
    "ex": (1.0, 0.9, 0.0),
    "se": (0.1, 0.9, 0.9),
    "od": (0.1, 0.8, 0.2),
}
FALLBACK_COLOUR = (1.0, 1.0, 1.0)


def is_idrid_examples(examples: Mapping[str, np.ndarray]) -> bool:
    return "lesion_pred" in examples


def tint(image: np.ndarray, masks: np.ndarray, names: Sequence[str] | np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with each mask of ``masks`` (L, H, W) tinted in its lesion's
    colour (later lesions over earlier ones); float RGB in [0, 1]."""
    rgb = image.astype(np.float64) / 255.0
    for mask, name in zip(masks, names):
        colour = np.asarray(LESION_COLOURS.get(str(name), FALLBACK_COLOUR))
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
    return rgb


def grades_text(names: Iterable[str] | np.ndarray, values: Iterable[int] | np.ndarray) -> str:
    return ", ".join(f"{name} {int(value)}" for name, value in zip(names, values))


def example_panels(examples: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """One uint8 image per kept example of one run: ground truth | prediction (W&B panels)."""
    names = examples["lesion_names"]
    panels = []
    for i in range(len(examples["index"])):
        truth = tint(examples["image"][i], examples["lesion_true"][i], names)
        predicted = tint(examples["image"][i], examples["lesion_pred"][i], names)
        panels.append((np.concatenate([truth, predicted], axis=1) * 255).round().astype(np.uint8))
    return panels


def example_captions(examples: Mapping[str, np.ndarray]) -> list[str]:
    grades = examples["grade_names"]
    return [
        f"test image {int(index)}; truth: {grades_text(grades, examples['grade_true'][i]) or '-'}; "
        f"predicted: {grades_text(grades, examples['grade_pred'][i]) or '-'}"
        for i, index in enumerate(examples["index"])
    ]


def _position(examples: Mapping[str, np.ndarray], index: int) -> int | None:
    hits = np.flatnonzero(np.asarray(examples["index"]) == index)
    return int(hits[0]) if len(hits) else None


def _has_masks(by_method: Mapping[str, Mapping[str, np.ndarray]], index: int) -> bool:
    """True when a run saw image ``index`` with a lesion mask (a segmentation-set image)."""
    for examples in by_method.values():
        i = _position(examples, index)
        if i is not None and examples["lesion_present"][i].any():
            return True
    return False


def _truth_source(by_method: Mapping[str, Mapping[str, np.ndarray]], index: int) -> tuple[np.ndarray, str]:
    """The image and a ground-truth title gathered over the methods that saw image ``index``."""
    image: np.ndarray | None = None
    lesions: dict[str, np.ndarray] = {}
    missing: list[str] = []
    grades: dict[str, int] = {}
    for examples in by_method.values():
        i = _position(examples, index)
        if i is None:
            continue
        image = np.asarray(examples["image"][i])
        for j, name in enumerate(examples["lesion_names"]):
            if examples["lesion_present"][i][j]:
                lesions[str(name)] = examples["lesion_true"][i][j]
            else:
                missing.append(str(name))
        for name, value in zip(examples["grade_names"], examples["grade_true"][i]):
            grades[str(name)] = int(value)
    title = f"test image {index}, ground truth\n{grades_text(grades, grades.values()) or 'no grade task'}"
    if image is None:
        raise ValueError(f"No run kept test image {index}.")
    absent = sorted(set(missing) - set(lesions))
    if absent and not lesions:
        title += "\nno lesion mask (grading-set image)"
    elif absent:
        title += f"\nno mask: {', '.join(absent)}"
    return tint(image, np.array(list(lesions.values()), dtype=bool).reshape(-1, *image.shape[:2]), list(lesions)), title


def plot_idrid_overlay(by_method: Mapping[str, Mapping[str, np.ndarray]], output: str | Path) -> Path:
    """``by_method``: method -> that run's example arrays. Rows: every kept image (segmentation
    images first); columns: ground truth, then each method."""
    methods = list(by_method)
    indices = sorted(
        {int(i) for e in by_method.values() for i in e["index"]}, key=lambda index: (not _has_masks(by_method, index), index)
    )
    fig, axes = plt.subplots(
        len(indices), 1 + len(methods), figsize=(3.4 * (1 + len(methods)), 2.9 * len(indices)), squeeze=False
    )
    for row, index in zip(axes, indices):
        truth, title = _truth_source(by_method, index)
        row[0].imshow(truth)
        row[0].set_title(title, fontsize="x-small")
        for ax, method in zip(row[1:], methods):
            examples = by_method[method]
            i = _position(examples, index)
            if i is None:
                ax.text(
                    0.5,
                    0.5,
                    "not evaluated on this image\n(none of its tasks)",
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    transform=ax.transAxes,
                )
                ax.set_title(method, fontsize="x-small")
                continue
            ax.imshow(tint(examples["image"][i], examples["lesion_pred"][i], examples["lesion_names"]))
            predicted = grades_text(examples["grade_names"], examples["grade_pred"][i])
            ax.set_title(f"{method}\n{predicted or 'no grade task'}", fontsize="x-small")
    for ax in axes.flat:
        ax.set_axis_off()
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in LESION_COLOURS.values()]
    fig.legend(handles, list(LESION_COLOURS), loc="lower center", ncol=len(LESION_COLOURS), fontsize="small")
    return save_figure(fig, output)
