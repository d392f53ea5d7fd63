"""Training strategies (METHODS.md section 1), one module each."""

from medmtl.strategies.base import StepContext, Strategy
from medmtl.strategies.io import IndependentOptimizers, SharedOptimizerAlternating
from medmtl.strategies.vanilla import EqualWeights, SingleTask

__all__ = ["EqualWeights", "IndependentOptimizers", "SharedOptimizerAlternating", "SingleTask", "StepContext", "Strategy"]
