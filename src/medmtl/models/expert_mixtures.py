"""``mmoe``, ``cgc``, ``dselect_k``: mixtures of whole-encoder experts, gated per task on the image.

The soft-sharing mixtures of LibMTL (Lin & Zhang 2023), built as LibMTL builds them for
images: every expert is a whole encoder (here our dilated ResNet, :func:`dense_features`) reading
the image; every task has a gate reading the flattened image that weighs the experts' feature
maps; the task's head (DeepLabV3's ASPP head, as LibMTL's NYUv2 example) reads the weighted sum:

    f_k(x) = sum_e g_k(x)_e E_e(x),      y_k = head_k(f_k(x)).

- **MMoE** (Ma et al. 2018): ``num_experts`` experts shared by all tasks; ``g_k = softmax(W_k x + b_k)``.
- **CGC** (Tang et al. 2020, PLE's single level): besides the shared experts, ``task_experts``
  experts of each task's own; task k's softmax gate weighs the shared ones and its own
  (``task_experts=0`` is MMoE).
- **PLE** (Tang et al. 2020) as LibMTL builds it (:class:`ProgressiveLayeredExtraction`): the
  experts are ResNets cut into five levels (stem, then the four stages); at level l, task k's
  representation passes through every shared expert's level l and its own experts' level l, and
  task k's level-l gate (a softmax on that representation, flattened) mixes them into task k's
  input of level l + 1. LibMTL has no shared gate (the paper's shared experts of a higher level read
  a shared gate's mixture; here, as in LibMTL, they read each task's representation in turn).
- **DSelect-k** (Hazimeh et al. 2021): ``num_experts`` shared experts and a sparse gate choosing
  ``num_nonzeros`` of them. For each of the k selectors, m = ceil(log2 E) logits z pass a smooth
  step S (0 below -gamma/2, 1 above gamma/2, ``-2/gamma^3 t^3 + 3/(2 gamma) t + 1/2`` between) and
  select expert e with weight ``r_e(z) = prod_j (S(z_j) if bit j of e else 1 - S(z_j))``
  (bits most significant first); the k selectors are mixed by ``softmax(w)``:
  ``g = sum_i softmax(w)_i r(z_i)``. Both z and w are linear in the flattened image. During
  training each task's loss carries its gate's regulariser
  ``entropy_weight * sum -r log(r + 1e-6)`` (over the batch, selectors and experts) and, when E is
  not a power of two, ``sum 1 / sum_e r_e`` (which keeps the selectors off the non-existent
  codes). Initialisation: z uniform in +-gamma/100, w uniform in +-0.05 (weights and biases).

Where LibMTL's code and the DSelect-k paper differ, this follows the paper and says so: LibMTL
evaluates the smooth step with gamma = 1 whatever ``kgamma`` is (``gamma`` only scales its
initialisation there), and it adds the regulariser of the last task's gate only (its loop
variable); here ``gamma`` is the smooth step's and every task's gate is regularised. At the
default ``gamma=1`` the smooth steps agree. ``entropy_weight`` is LibMTL's 1e-6. LibMTL builds the
binary codes by casting the characters of ``np.binary_repr`` to bool, which under NumPy 2 makes
every bit True: all experts share one code and its gate weighs them equally. Here the codes are the
paper's (the tests give LibMTL these codes before comparing).

Gate input: LibMTL's gates read the flattened image, so their size is fixed when the network is
built (its ``img_size``): ``gate_input_size`` is that [height, width] (LibMTL's NYUv2 example:
288 x 384). An image of another size is average-pooled to it (adaptive pooling; an identity at
that size) so that one built network serves any resolution.

The shared representation of the "-UB" strategies is the stacked feature maps of the shared
experts; the task experts, gates and heads are each task's own. Checked against LibMTL's
``MMoE``, ``CGC``, ``DSelect_k`` and ``PLE`` run in the tests with the same weights (same outputs and
parameter counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.backbones import dense_features, resnet_levels
from medmtl.models.heads import ASPPHead
from medmtl.models.scene_base import DenseSceneNet
from medmtl.tasks import Task

GATES = ("softmax", "dselect_k")


class SoftmaxGate(nn.Module):
    """MMoE's and CGC's gate: ``softmax(W x + b)`` over the experts, x the flattened image."""

    def __init__(self, in_features: int, n_experts: int):
        super().__init__()
        self.linear = nn.Linear(in_features, n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)


def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """DSelect-k's cubic smooth step: 0 for t <= -gamma/2, 1 for t >= gamma/2, else
    ``-2/gamma^3 t^3 + 3/(2 gamma) t + 1/2`` (continuously differentiable at both ends)."""
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectGate(nn.Module):
    """DSelect-k's gate (module docstring): ``num_nonzeros`` binary-encoded selectors mixed by a
    softmax; keeps its regulariser for the last training forward in :attr:`regularizer`."""

    def __init__(self, in_features: int, n_experts: int, num_nonzeros: int, gamma: float, entropy_weight: float):
        super().__init__()
        self.n_bits = max(1, math.ceil(math.log2(n_experts)))
        self.num_nonzeros, self.gamma, self.entropy_weight = num_nonzeros, gamma, entropy_weight
        self.power_of_two = n_experts == 2**self.n_bits
        self.z_logits = nn.Linear(in_features, num_nonzeros * self.n_bits)
        self.w_logits = nn.Linear(in_features, num_nonzeros)
        nn.init.uniform_(self.z_logits.weight, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.z_logits.bias, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.w_logits.weight, -0.05, 0.05)
        nn.init.uniform_(self.w_logits.bias, -0.05, 0.05)
        bits = [[(e >> (self.n_bits - 1 - j)) & 1 for j in range(self.n_bits)] for e in range(n_experts)]
        self.codes: torch.Tensor
        self.register_buffer("codes", torch.tensor(bits, dtype=torch.bool), persistent=False)  # (E, m)
        self.regularizer: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.z_logits(x).view(-1, self.num_nonzeros, 1, self.n_bits)  # (B, k, 1, m)
        step = smooth_step(z, self.gamma)
        selectors = torch.where(self.codes, step, 1 - step).prod(dim=-1)  # (B, k, E)
        mix = torch.softmax(self.w_logits(x), dim=-1)  # (B, k)
        if self.training:
            regularizer = -(selectors * torch.log(selectors + 1e-6)).sum() * self.entropy_weight
            if not self.power_of_two:
                regularizer = regularizer + (1 / selectors.sum(dim=-1)).sum()
            self.regularizer = regularizer
        return torch.einsum("bk,bke->be", mix, selectors)


class ExpertMixture(DenseSceneNet):
    """Args: tasks; num_experts (shared experts, >= 1); task_experts (each task's own, CGC; 0 for
    MMoE and DSelect-k); gate (``softmax`` | ``dselect_k``); num_nonzeros and gamma (DSelect-k's k
    and smooth-step width); entropy_weight (DSelect-k's regulariser); gate_input_size ([H, W] the
    gates read); backbone, output_stride, weights_path (each expert: a dilated ResNet, local
    weights only); aspp_width (the heads'); input_normalization; in_channels."""

    def __init__(
        self,
        tasks: Sequence[Task],
        num_experts: int = 2,
        task_experts: int = 0,
        gate: str = "softmax",
        num_nonzeros: int = 2,
        gamma: float = 1.0,
        entropy_weight: float = 1e-6,
        gate_input_size: Sequence[int] = (288, 384),
        backbone: str = "resnet50",
        output_stride: int = 8,
        weights_path: str | None = None,
        aspp_width: int = 256,
        input_normalization: str = "imagenet",
        in_channels: int = 3,
    ):
        super().__init__(tasks, input_normalization)
        check_expert_options(num_experts, task_experts, gate, num_nonzeros, gamma, gate_input_size)
        if gate == "dselect_k" and task_experts:
            raise ConfigError("model.task_experts must be 0 with model.gate=dselect_k (DSelect-k selects among shared experts).")
        self.gate_input_size = (int(gate_input_size[0]), int(gate_input_size[1]))
        gate_features = in_channels * self.gate_input_size[0] * self.gate_input_size[1]

        built = [dense_features(backbone, output_stride, weights_path) for _ in range(num_experts)]
        channels = built[0][1]

        def expert() -> nn.Module:
            return dense_features(backbone, output_stride, weights_path)[0]

        self.experts = nn.ModuleList(module for module, _ in built)
        self.task_experts = nn.ModuleDict({t.name: nn.ModuleList(expert() for _ in range(task_experts)) for t in tasks})
        n_choices = num_experts + task_experts
        self.gates = nn.ModuleDict(
            {
                t.name: SoftmaxGate(gate_features, n_choices)
                if gate == "softmax"
                else DSelectGate(gate_features, n_choices, num_nonzeros, gamma, entropy_weight)
                for t in tasks
            }
        )
        self.heads_by_task = nn.ModuleDict({t.name: ASPPHead(channels, t, aspp_width) for t in tasks})
        self._image: torch.Tensor | None = None

    def _gate_input(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) != self.gate_input_size:
            image = F.adaptive_avg_pool2d(image, self.gate_input_size)
        return image.flatten(start_dim=1)

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The shared experts' feature maps, stacked (E, B, C, h, w)."""
        self._input_size = tuple(image.shape[-2:])
        self._image = self.normalize(image)
        return {"experts": torch.stack([e(self._image) for e in self.experts])}

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        assert self._image is not None, "heads() reads the image of the last representation()"
        gate_input = self._gate_input(self._image)
        logits = {}
        for name in tasks:
            candidates = shared["experts"]
            own = cast(nn.ModuleList, self.task_experts[name])
            if len(own):
                candidates = torch.cat([candidates, torch.stack([e(self._image) for e in own])])
            weights = self.gates[name](gate_input)  # (B, E)
            mixed = torch.einsum("eb...,be->b...", candidates, weights)
            logits[name] = self.heads_by_task[name](mixed)
        return self.finish(logits, self._input_size)

    def auxiliary_loss(self, task: str) -> torch.Tensor | None:
        """DSelect-k: the regulariser of ``task``'s gate for the last training forward."""
        gate = self.gates[task]
        return gate.regularizer if isinstance(gate, DSelectGate) and self.training else None

    def path_modules(self, task: str) -> list[nn.Module]:
        return [self.experts, self.task_experts[task], self.gates[task], self.heads_by_task[task]]


def check_expert_options(
    num_experts: int, task_experts: int, gate: str, num_nonzeros: int, gamma: float, gate_input_size: Sequence[int]
) -> None:
    """One sentence for an option out of its range (also checked when the config is composed)."""
    if gate not in GATES:
        raise ConfigError(f"model.gate must be one of {GATES}, got {gate!r}.")
    if not (isinstance(num_experts, int) and num_experts >= 1):
        raise ConfigError(f"model.num_experts must be an integer >= 1, got {num_experts!r}.")
    if not (isinstance(task_experts, int) and task_experts >= 0):
        raise ConfigError(f"model.task_experts must be an integer >= 0, got {task_experts!r}.")
    if gate == "dselect_k" and not (isinstance(num_nonzeros, int) and num_nonzeros >= 1):
        raise ConfigError(f"model.num_nonzeros must be an integer >= 1, got {num_nonzeros!r}.")
    if not gamma > 0:
        raise ConfigError(f"model.gamma must be positive, got {gamma!r}.")
    if len(gate_input_size) != 2 or not all(isinstance(v, int) and v > 0 for v in gate_input_size):
        raise ConfigError(f"model.gate_input_size must be a [height, width] pair of positive integers, got {gate_input_size!r}.")


class ProgressiveLayeredExtraction(DenseSceneNet):
    """PLE as LibMTL builds it for images (module docstring). Args: tasks; num_experts (shared
    experts, >= 1); task_experts (each task's own, >= 0); gate_input_size ([H, W] of the image the
    level gates are sized for; each level's gate reads its input pooled to the size it has at that
    image size); backbone (a timm ResNet), output_stride, weights_path; aspp_width;
    input_normalization; in_channels."""

    LEVELS = 5

    def __init__(
        self,
        tasks: Sequence[Task],
        num_experts: int = 1,
        task_experts: int = 1,
        gate_input_size: Sequence[int] = (288, 384),
        backbone: str = "resnet50",
        output_stride: int = 8,
        weights_path: str | None = None,
        aspp_width: int = 256,
        input_normalization: str = "imagenet",
        in_channels: int = 3,
    ):
        super().__init__(tasks, input_normalization)
        check_expert_options(num_experts, task_experts, "softmax", 1, 1.0, gate_input_size)
        shared = [resnet_levels(backbone, output_stride, weights_path) for _ in range(num_experts)]
        channels = shared[0][1]
        self.shared_levels = nn.ModuleList(nn.ModuleList(levels[i] for levels, _ in shared) for i in range(self.LEVELS))
        self.task_levels = nn.ModuleDict()
        for t in tasks:
            own = [resnet_levels(backbone, output_stride, weights_path)[0] for _ in range(task_experts)]
            self.task_levels[t.name] = nn.ModuleList(nn.ModuleList(levels[i] for levels in own) for i in range(self.LEVELS))
        self.level_inputs = self._level_inputs((in_channels, int(gate_input_size[0]), int(gate_input_size[1])))
        n_choices = num_experts + task_experts
        self.gates = nn.ModuleDict(
            {t.name: nn.ModuleList(SoftmaxGate(c * h * w, n_choices) for c, h, w in self.level_inputs) for t in tasks}
        )
        self.heads_by_task = nn.ModuleDict({t.name: ASPPHead(channels, t, aspp_width) for t in tasks})

    @torch.no_grad()
    def _level_inputs(self, image_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """(C, h, w) of each level's input for an image of ``image_shape``, through the first shared
        expert in eval mode (its batch-norm statistics untouched)."""
        x = torch.zeros(1, *image_shape)
        shapes = []
        for level in self.shared_levels:
            shapes.append(tuple(x.shape[1:]))
            first = cast(nn.ModuleList, level)[0]
            training = first.training
            x = first.eval()(x)
            first.train(training)
        return cast(list[tuple[int, int, int]], shapes)

    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Each requested task's representation after the last level (the tasks share parameters,
        not features)."""
        tasks = self._check_tasks(tasks)
        self._input_size = tuple(image.shape[-2:])
        x = self.normalize(image)
        features = {name: x for name in tasks}
        for level in range(self.LEVELS):
            for name in tasks:
                features[name] = self._mix(level, name, features[name])
        return features

    def _mix(self, level: int, name: str, x: torch.Tensor) -> torch.Tensor:
        experts = list(cast(nn.ModuleList, self.shared_levels[level])) + list(
            cast(nn.ModuleList, cast(nn.ModuleList, self.task_levels[name])[level])
        )
        outputs = torch.stack([e(x) for e in experts])
        _, h, w = self.level_inputs[level]
        gate_input = x if tuple(x.shape[-2:]) == (h, w) else F.adaptive_avg_pool2d(x, (h, w))
        weights = cast(nn.ModuleList, self.gates[name])[level](gate_input.flatten(start_dim=1))
        return torch.einsum("eb...,be->b...", outputs, weights)

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        return self.finish({name: self.heads_by_task[name](shared[name]) for name in tasks}, self._input_size)

    def path_modules(self, task: str) -> list[nn.Module]:
        return [self.shared_levels, self.task_levels[task], self.gates[task], self.heads_by_task[task]]
