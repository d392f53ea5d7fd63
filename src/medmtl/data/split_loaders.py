"""The three Lightning loader hooks of a datamodule whose ``_loader(split, shuffle)`` builds them."""

from __future__ import annotations

from typing import Callable

from torch.utils.data import DataLoader


class SplitLoaders:
    """Mixin: training shuffled, validation and test in order, all from ``self._loader``, which the
    datamodule defines: ``_loader(split, shuffle) -> DataLoader``."""

    _loader: Callable[[str, bool], DataLoader]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
