"""Every strategy in your own training loop (docs/api.md).

    from medmtl.api import MultiTaskStep, Task, TaskNetwork

Importing this package loads PyTorch, torchjd and the strategies, not Hydra, Lightning, W&B or
the datasets (a test holds it).
"""

from medmtl.api.network import TaskNetwork
from medmtl.api.registry import make_strategy, optim_config, strategy_names
from medmtl.api.step import MultiTaskStep
from medmtl.errors import ConfigError
from medmtl.tasks import Task

__all__ = ["ConfigError", "MultiTaskStep", "Task", "TaskNetwork", "make_strategy", "optim_config", "strategy_names"]
