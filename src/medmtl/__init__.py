"""medmtl: multi-task learning for medical and scene images (Hydra + PyTorch Lightning)."""

__version__ = "0.1.0"
