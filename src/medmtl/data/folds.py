"""Stratified k-fold splits with a split seed that is independent of the training seed.

Pascal et al. 2022 runs 5-fold CV on the merged, shuffled Training400 + Validation400 (stratified by the
glaucoma label) with the official test set fixed. The folds depend only on the sample ids, the
labels, ``n_folds`` and ``split_seed``: changing the training seed never changes the folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from medmtl.data.errors import DatasetError
from medmtl.errors import ConfigError


def stratified_fold(labels: Sequence[int], n_folds: int, fold: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) of fold ``fold`` of ``n_folds``."""
    if not 0 <= fold < n_folds:
        raise ConfigError(f"data.fold must be in [0, {n_folds - 1}], got {fold}.")
    classes = np.asarray(labels)
    smallest = np.bincount(classes).min() if classes.size else 0
    if smallest < n_folds:
        raise DatasetError(
            f"Cannot stratify {classes.size} samples into {n_folds} folds: the rarest class has {smallest} samples."
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=split_seed)
    train_idx, val_idx = list(splitter.split(np.zeros(classes.size), classes))[fold]
    return train_idx, val_idx
