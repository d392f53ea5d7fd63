"""Training strategies (docs/methods.md), one module each."""

from medmtl.strategies.base import StepContext, Strategy
from medmtl.strategies.dtp import DynamicTaskPrioritization
from medmtl.strategies.dwa import DynamicWeightAverage
from medmtl.strategies.fixed import FixedWeights
from medmtl.strategies.ga import GradientAccumulation
from medmtl.strategies.gradient_combination import GradientCombination
from medmtl.strategies.gradnorm import GradNorm
from medmtl.strategies.io import IndependentOptimizers, SharedOptimizerAlternating
from medmtl.strategies.jacobian_aggregator import JacobianAggregator
from medmtl.strategies.mao import MultiAdaptive, MultiAdaptiveOptimization
from medmtl.strategies.mgda import MGDA
from medmtl.strategies.pcgrad import PCGrad
from medmtl.strategies.uncertainty import UncertaintyWeighting
from medmtl.strategies.weighted_sum import EqualWeights, SingleTask, WeightedSum

__all__ = [
    "DynamicTaskPrioritization",
    "DynamicWeightAverage",
    "EqualWeights",
    "FixedWeights",
    "GradNorm",
    "GradientAccumulation",
    "GradientCombination",
    "JacobianAggregator",
    "MGDA",
    "MultiAdaptive",
    "MultiAdaptiveOptimization",
    "PCGrad",
    "IndependentOptimizers",
    "SharedOptimizerAlternating",
    "SingleTask",
    "StepContext",
    "Strategy",
    "UncertaintyWeighting",
    "WeightedSum",
]
