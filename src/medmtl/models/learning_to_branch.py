"""``ltb``: Learning to Branch (Guo et al. 2020) as LibMTL builds it for images (Lin & Zhang 2023).

One ResNet per task, cut into five levels (stem, then the four stages; dilated to output stride 8).
Level 0 of task t reads the image; level l >= 1 of task t reads a branching choice among the
previous level's outputs of every task:

    x_t^0 = stem_t(image),      x_t^l = level_t^l( sum_j A^l_{t j} x_j^{l-1} ),   l = 1 .. 4,

and task t's head (DeepLabV3's ASPP head) reads x_t^4. The branching logits alpha (a learned
(5, T, T) tensor; LibMTL's has a sixth, unused row) give A:

- warm-up (epoch < epochs / 100): A = 1 everywhere, every level reading the SUM of all tasks'
  previous outputs (LibMTL's warm-up);
- then, in training, A^l_t = Gumbel-softmax(alpha^l_t, tau, hard) over j (a one-hot sample whose
  gradient is the soft sample's), tau = (epochs / 20) / sqrt(epoch + 1) (LibMTL's decay);
- in evaluation, A^l_t = one-hot(argmax_j alpha^l_t): the architecture the paper derives after
  training. LibMTL keeps drawing Gumbel samples when it evaluates (a random architecture per test
  batch); ``eval_branching: sample`` does so too.

The training progress (``set_training_progress``: epoch / max_epochs) and ``epochs`` (the run's
max_epochs) give the epoch. Every task's output depends on every network (through A), so the
task-specific parameters are only the heads; the branching logits are shared. The shared
representation of the "-UB" strategies is the five-level result of each task (per-task features).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.backbones import resnet_levels
from medmtl.models.heads import ASPPHead
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task

EVAL_BRANCHING = ("argmax", "sample")


class BranchingLogits(nn.Module):
    """alpha: (levels, T, T) branching logits, all ones at the start (LibMTL)."""

    def __init__(self, levels: int, n_tasks: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(levels, n_tasks, n_tasks))


class LearningToBranch(DenseSceneNet):
    """Args: tasks; epochs (the run's max_epochs: warm-up length and temperature); eval_branching
    (``argmax`` | ``sample``); backbone (a timm ResNet), output_stride, weights_path;
    aspp_width; input_normalization."""

    LEVELS = 5

    def __init__(
        self,
        tasks: Sequence[Task],
        epochs: int = 100,
        eval_branching: str = "argmax",
        backbone: str = "resnet50",
        output_stride: int = 8,
        weights_path: str | None = None,
        aspp_width: int = 256,
        input_normalization: str = "imagenet",
    ):
        super().__init__(tasks, input_normalization)
        if not (isinstance(epochs, int) and epochs >= 1):
            raise ConfigError(f"model.epochs must be an integer >= 1 (the run's max_epochs), got {epochs!r}.")
        if eval_branching not in EVAL_BRANCHING:
            raise ConfigError(f"model.eval_branching must be one of {EVAL_BRANCHING}, got {eval_branching!r}.")
        self.epochs, self.eval_branching = epochs, eval_branching
        networks = [resnet_levels(backbone, output_stride, weights_path) for _ in tasks]
        channels = networks[0][1]
        self.levels = nn.ModuleList(nn.ModuleList(levels[i] for levels, _ in networks) for i in range(self.LEVELS))
        self.branch = BranchingLogits(self.LEVELS, len(tasks))
        self.heads_by_task = nn.ModuleDict({task.name: ASPPHead(channels, task, aspp_width) for task in tasks})
        self.epoch = 0

    def set_training_progress(self, fraction: float) -> None:
        self.epoch = int(round(fraction * self.epochs))

    def temperature(self) -> float:
        """LibMTL's Gumbel temperature at the current epoch: (epochs / 20) / sqrt(epoch + 1)."""
        return self.epochs / 20 / math.sqrt(self.epoch + 1)

    def branching(self) -> torch.Tensor:
        """A: (levels, T, T), row t of level l choosing what level l of task t reads."""
        alpha = self.branch.alpha
        if self.training and self.epoch < self.epochs / 100:
            return torch.ones_like(alpha)
        if self.training or self.eval_branching == "sample":
            return F.gumbel_softmax(alpha, tau=self.temperature(), hard=True, dim=-1)
        return F.one_hot(alpha.argmax(dim=-1), alpha.shape[-1]).to(alpha)

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        self._input_size = tuple(image.shape[-2:])
        x = self.normalize(image)
        choice = self.branching()
        stems = cast(nn.ModuleList, self.levels[0])
        outputs = [stem(x) for stem in stems]
        for level in range(1, self.LEVELS):
            blocks = cast(nn.ModuleList, self.levels[level])
            stacked = torch.stack(outputs)  # (T, B, C, h, w)
            outputs = [blocks[t](torch.einsum("j,j...->...", choice[level, t], stacked)) for t in range(len(blocks))]
        return {name: outputs[self.task_names.index(name)] for name in tasks}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        return self.finish({name: self.heads_by_task[name](shared[name]) for name in tasks}, self._input_size)

    def forward(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.heads(self.representation(image, tasks), tasks)

    def path_modules(self, task: str) -> list[nn.Module]:
        return [self.levels, self.branch, self.heads_by_task[task]]
