"""Dataset errors: :class:`medmtl.errors.DatasetError`, re-exported where the data modules look for it."""

from medmtl.errors import DatasetError

__all__ = ["DatasetError"]
