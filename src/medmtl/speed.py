"""Speed options that keep results (``speed.*`` in the training config; docs/performance.md).

- ``channels_last``: the network's weights and its image inputs in the NHWC memory format, which
  convolutions on tensor cores prefer. The arithmetic is the same; cuDNN may order its sums
  differently, so results agree to rounding, not bit for bit.
- ``compile``: ``torch.compile`` of the network's forward (in place: parameter names and
  checkpoints are unchanged). The first iterations pay the compilation (tens of seconds, more for
  large networks); gradients through the compiled forward are the same maths, so results agree to
  rounding. The strategies' own calls (``representation``/``heads`` of the -UB variants) stay
  eager. Refused for strategies that take several backward passes through one forward
  (``Strategy.reuses_forward_graph``: the Jacobian methods, GradNorm, MAO, DB-MTL, MoCo): with
  torch 2.14 on the CPU the compiled (inductor) backward, run again on a retained graph, gave NaN
  in float64 and wrong float32 parameters (``benchmarks/speed_check.py``), while the eager
  backward of the same graph is right.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medmtl.errors import ConfigError

if TYPE_CHECKING:
    from medmtl.strategies.base import Strategy


@dataclass(frozen=True)
class SpeedOptions:
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def of(cls, options: Mapping[str, Any] | None) -> SpeedOptions:
        return cls(**dict(options or {}))

    def prepare(self, network: nn.Module) -> None:
        """Apply the options to ``network`` in place (before its first forward)."""
        if self.channels_last:
            network.to(memory_format=torch.channels_last)
        if self.compile:
            # the strategies take several backward passes through one forward (retain_graph=True:
            # per-task gradients, Jacobians); buffers donated to the compiled backward forbid that
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False
            network.compile()

    def input(self, tensor: torch.Tensor) -> torch.Tensor:
        """A network input in the chosen memory format (images only: 4-d floating tensors)."""
        if self.channels_last and tensor.dim() == 4 and tensor.is_floating_point():
            return tensor.contiguous(memory_format=torch.channels_last)
        return tensor


def check_compile(options: SpeedOptions, strategy: Strategy) -> None:
    """Refuse ``speed.compile`` for a strategy that reuses one forward for several backward passes
    (see the module docstring)."""
    if options.compile and strategy.reuses_forward_graph:
        raise ConfigError(
            f"speed.compile is refused for {type(strategy).__name__}: it takes several backward passes through one "
            "forward, which the compiled backward got wrong in benchmarks/speed_check.py; train it with speed.compile=false."
        )
