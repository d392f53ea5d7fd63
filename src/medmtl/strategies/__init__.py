"""Training strategies (docs/methods.md), one module each."""

from medmtl.strategies.auto_lambda import AutoLambda
from medmtl.strategies.base import StepContext, Strategy
from medmtl.strategies.bayesagg import BayesAggMTL
from medmtl.strategies.dtp import DynamicTaskPrioritization
from medmtl.strategies.dual_balancing import DualBalancing
from medmtl.strategies.dwa import DynamicWeightAverage
from medmtl.strategies.famo import FastAdaptiveMultitask
from medmtl.strategies.fixed import FixedWeights
from medmtl.strategies.forum import FORUM
from medmtl.strategies.ga import GradientAccumulation
from medmtl.strategies.go4align import GroupAlignment
from medmtl.strategies.graddrop import GradientSignDropout
from medmtl.strategies.gradient_combination import GradientCombination
from medmtl.strategies.gradnorm import GradNorm
from medmtl.strategies.imtl import ImpartialLossScaling, ImpartialMTL
from medmtl.strategies.io import IndependentOptimizers, SharedOptimizerAlternating
from medmtl.strategies.jacobian_aggregator import JacobianAggregator
from medmtl.strategies.ldc_mtl import LossDiscrepancyControl
from medmtl.strategies.mao import MultiAdaptive, MultiAdaptiveOptimization
from medmtl.strategies.mgda import MGDA
from medmtl.strategies.moco import MultiObjectiveCorrection
from medmtl.strategies.moml import MOML
from medmtl.strategies.ntkmtl import NTKMTL, NTKMTLSR
from medmtl.strategies.pcgrad import PCGrad
from medmtl.strategies.preference_scalarization import PreferenceScalarization
from medmtl.strategies.random_weighting import RandomLossWeighting
from medmtl.strategies.scale_invariant import GeometricLossStrategy, ScaleInvariantLosses
from medmtl.strategies.selective_update import SelectiveGroupUpdates
from medmtl.strategies.stch import SmoothTchebycheff
from medmtl.strategies.uncertainty import UncertaintyWeighting
from medmtl.strategies.weighted_sum import EqualWeights, SingleTask, WeightedSum

__all__ = [
    "AutoLambda",
    "BayesAggMTL",
    "MultiObjectiveCorrection",
    "DualBalancing",
    "FastAdaptiveMultitask",
    "ImpartialLossScaling",
    "ImpartialMTL",
    "PreferenceScalarization",
    "RandomLossWeighting",
    "GeometricLossStrategy",
    "ScaleInvariantLosses",
    "SelectiveGroupUpdates",
    "SmoothTchebycheff",
    "DynamicTaskPrioritization",
    "DynamicWeightAverage",
    "EqualWeights",
    "FixedWeights",
    "FORUM",
    "GradNorm",
    "GroupAlignment",
    "GradientAccumulation",
    "GradientCombination",
    "GradientSignDropout",
    "JacobianAggregator",
    "LossDiscrepancyControl",
    "MGDA",
    "MOML",
    "NTKMTL",
    "NTKMTLSR",
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
