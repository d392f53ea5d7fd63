"""Mixture-of-experts multi-task DeepLabV3+ (Roy 2025; docs/methods.md).

- Shared backbone: a timm ResNet (ResNet-50 in Roy 2025) with output stride 16; its stride-4
  features feed the DeepLabV3+ decoders.
- Shared ASPP for the segmentation tasks, as the authors' code builds it: a 1x1 conv, three
  depthwise-separable 3x3 convs at rates 6/12/18 and an image-pooling branch (1x1 conv), each
  followed by batch norm and ReLU, concatenated and projected by a 1x1 conv, batch norm, ReLU to
  ``aspp_channels`` (256). Their convolutions carry biases and their depthwise-separable
  convolution is the depthwise and the pointwise convolution alone (the batch norm follows it).
- Per task, ``n_experts`` (3 in Roy 2025's Table 1) experts and a gate, as in the authors' code
  (which gave the paper's numbers; its Fig. 2 shows the classification expert). Classification
  expert: adaptive average pool of the backbone's final map to ``classifier_pool`` (11 x 16), a
  depthwise-separable 3x3 conv of stride 2 to half the channels (2048 -> 1024), global average
  pool, a linear layer to ``classifier_channels`` (256), ReLU, dropout 0.5, a linear layer to the
  classes. Segmentation expert: a DeepLabV3+ decoder (the stride-4 features projected by a 1x1
  conv, batch norm, ReLU to ``low_level_channels`` (64), concatenated after the ASPP output
  up-sampled to them; a depthwise-separable 3x3 conv to ``decoder_channels`` (256), batch norm,
  ReLU, dropout 0.5, a 1x1 conv to the logits), the experts' mixture up-sampled to the input.
  Up-sampling aligns corners, as theirs. Gate: global average pool, linear, sigmoid: scores
  s_e in (0, 1), read from the backbone's final map for a classification task and from the ASPP
  output for a segmentation task.
- Routing. Dense (the first ``dense_fraction`` of the epochs): y = sum_e s_e y_e / sum_e s_e.
  Top-p (afterwards, also at inference): with the scores sorted in decreasing order, keep the
  fewest experts whose raw scores s sum to at least ``top_p`` (0.8; all of them if the sum never
  reaches it), renormalise the kept scores (``top_p_scores: normalised`` ranks q = s / sum s). The phase
  is a buffer, so a checkpoint taken after the switch evaluates with top-p routing.
- Auxiliary gate losses, added to their task's loss (``auxiliary_loss``), each with its weight:
  L1 sparsity mean_e |s_e|; load balancing KL(u || uniform) with u the batch-mean of q; negative
  entropy -H(q), averaged over samples (Roy 2025: "to discourage the model from selecting the
  same expert all the time"). Choice: the entropy is that of each sample's routing (the batch
  version would duplicate the load-balancing term up to a constant); ``entropy_of: batch`` gives
  -H(u) instead.
- ``routing_statistics()``: the mean number of experts kept per task since the last call (a
  logged diagnostic; 3 in the dense phase).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.backbones import InputNormalization, timm_weights
from medmtl.models.base import MultiTaskNet
from medmtl.models.heads import conv_head, shape_output
from medmtl.tasks import Task


def separable_conv(cin: int, cout: int, dilation: int = 1, stride: int = 1) -> nn.Sequential:
    """The authors' depthwise-separable convolution: depthwise 3x3 (dilated, strided), then pointwise
    1x1, both with bias, nothing after them."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=dilation, dilation=dilation, groups=cin), nn.Conv2d(cin, cout, 1)
    )


def normalised(convolution: nn.Module, channels: int) -> nn.Sequential:
    """``convolution``, batch norm, ReLU."""
    return nn.Sequential(convolution, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, corners aligned (the authors' code)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class SeparableASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: Sequence[int] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList(
            [normalised(nn.Conv2d(cin, cout, 1), cout)] + [normalised(separable_conv(cin, cout, r), cout) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), normalised(nn.Conv2d(cin, cout, 1), cout))
        self.project = normalised(nn.Conv2d(cout * (len(rates) + 2), cout, 1), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = resize(self.pool(x), x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class SegmentationExpert(nn.Module):
    """A DeepLabV3+ decoder with a depthwise-separable convolution (module docstring)."""

    def __init__(self, aspp_channels: int, low_channels: int, projected: int, width: int, task: Task):
        super().__init__()
        self.reduce = normalised(nn.Conv2d(low_channels, projected, 1), projected)
        self.fuse = nn.Sequential(normalised(separable_conv(aspp_channels + projected, width), width), nn.Dropout(0.5))
        self.logit = conv_head(width, task)

    def forward(self, aspp: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.logit(self.fuse(torch.cat([resize(aspp, low.shape[-2:]), self.reduce(low)], dim=1)))


class ClassificationExpert(nn.Module):
    """Pool to ``pool``, a strided depthwise-separable conv to half the channels, global pool, an MLP."""

    def __init__(self, cin: int, hidden: int, task: Task, pool: Sequence[int] = (11, 16)):
        super().__init__()
        self.body = nn.Sequential(
            nn.AdaptiveAvgPool2d(tuple(pool)), separable_conv(cin, cin // 2, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.mlp = nn.Sequential(nn.Linear(cin // 2, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, task.channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.body(x))


TOP_P_SCORES = ("raw", "normalised")


def top_p_mask(scores: torch.Tensor, p: float, of: str = "raw") -> torch.Tensor:
    """Per row, True for the fewest experts, most confident first, whose scores sum to >= p (all of
    them when the scores never reach p). ``of``: the raw gate scores s (Roy 2025: "the most
    confident experts such that their combined confidence score is at least p", as the authors'
    code) or the normalised q = s / sum s (which reaches p later, so keeps more experts)."""
    q = scores if of == "raw" else scores / scores.sum(dim=1, keepdim=True)
    sorted_q, order = q.sort(dim=1, descending=True)
    before = sorted_q.cumsum(dim=1) - sorted_q  # mass of the experts ranked above
    keep_sorted = before < p - 1e-12  # an expert is kept while the mass above it is < p
    return torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)


class MoEDeepLabV3Plus(MultiTaskNet):
    """Args (see the module docstring): tasks; backbone (timm ResNet name; ``resnet18`` for tests);
    n_experts; top_p; dense_fraction; aspp_channels, decoder_channels, low_level_channels,
    classifier_channels (the classification MLP's hidden width), classifier_pool;
    gate loss weights l1_weight, balance_weight, entropy_weight; entropy_of (``sample`` | ``batch``);
    weights_path (a local backbone state dict; nothing is downloaded); input_normalization
    (``imagenet`` with ImageNet weights, Roy 2025 | ``none``); top_p_scores (``raw`` | ``normalised``,
    see :func:`top_p_mask`)."""

    top_p_active: torch.Tensor

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "resnet50",
        n_experts: int = 3,
        top_p: float = 0.8,
        dense_fraction: float = 0.5,
        aspp_channels: int = 256,
        decoder_channels: int = 256,
        classifier_channels: int = 256,
        low_level_channels: int = 64,
        classifier_pool: Sequence[int] = (11, 16),
        l1_weight: float = 0.01,
        balance_weight: float = 0.01,
        entropy_weight: float = 0.01,
        entropy_of: str = "sample",
        weights_path: str | None = None,
        input_normalization: str = "imagenet",
        top_p_scores: str = "raw",
    ):
        super().__init__()
        import timm

        if not 0.0 < top_p <= 1.0:
            raise ConfigError(f"model.top_p must be in (0, 1], got {top_p}.")
        if top_p_scores not in TOP_P_SCORES:
            raise ConfigError(f"model.top_p_scores must be one of {TOP_P_SCORES}, got {top_p_scores!r}.")
        if entropy_of not in ("sample", "batch"):
            raise ConfigError(f"model.entropy_of must be sample or batch, got {entropy_of!r}.")
        self.task_names = tuple(t.name for t in tasks)
        self.task_by_name = {t.name: t for t in tasks}
        self.n_experts, self.top_p, self.dense_fraction = n_experts, top_p, dense_fraction
        self.weights = {"l1": l1_weight, "balance": balance_weight, "entropy": entropy_weight}
        self.entropy_of, self.top_p_scores = entropy_of, top_p_scores
        self.input_normalization = InputNormalization(input_normalization)
        network: Any = timm.create_model(
            backbone, features_only=True, output_stride=16, out_indices=(1, 4), **timm_weights(weights_path)
        )
        self.backbone = network
        low_channels, high_channels = network.feature_info.channels()
        dense = [t for t in tasks if t.is_dense]
        self.aspp = SeparableASPP(high_channels, aspp_channels) if dense else None
        self.experts = nn.ModuleDict()
        for task in tasks:
            members: list[nn.Module]
            if task.is_dense:
                members = [
                    SegmentationExpert(aspp_channels, low_channels, low_level_channels, decoder_channels, task)
                    for _ in range(n_experts)
                ]
            else:
                members = [
                    ClassificationExpert(high_channels, classifier_channels, task, classifier_pool) for _ in range(n_experts)
                ]
            self.experts[task.name] = nn.ModuleList(members)
        # a segmentation task's gate reads the ASPP output, a classification task's the backbone's map
        self.gates = nn.ModuleDict({t.name: nn.Linear(aspp_channels if t.is_dense else high_channels, n_experts) for t in tasks})
        self.dense_tasks = {t.name for t in dense}
        self.register_buffer("top_p_active", torch.tensor(False))
        self._auxiliary: dict[str, torch.Tensor] = {}
        self._kept: dict[str, list[float]] = {}

    # ----- routing --------------------------------------------------------------------------
    def set_training_progress(self, fraction: float) -> None:
        """Called at each epoch start with epoch / max_epochs: top-p routing from dense_fraction on."""
        self.top_p_active.fill_(bool(fraction >= self.dense_fraction))

    def _route(self, name: str, scores: torch.Tensor) -> torch.Tensor:
        """Mixing weights (B, E) summing to 1 per sample; records the auxiliary loss and usage."""
        if bool(self.top_p_active):
            kept = top_p_mask(scores.detach(), self.top_p, self.top_p_scores).to(scores.dtype)
        else:
            kept = torch.ones_like(scores)
        mixed = scores * kept
        weights = mixed / mixed.sum(dim=1, keepdim=True)
        q = scores / scores.sum(dim=1, keepdim=True)
        usage = q.mean(dim=0)
        log_e = math.log(self.n_experts)
        balance = (usage * (usage.clamp_min(1e-12).log() + log_e)).sum()
        if self.entropy_of == "sample":
            entropy = -(q * q.clamp_min(1e-12).log()).sum(dim=1).mean()
        else:
            entropy = -(usage * usage.clamp_min(1e-12).log()).sum()
        self._auxiliary[name] = (
            self.weights["l1"] * scores.abs().mean() + self.weights["balance"] * balance - self.weights["entropy"] * entropy
        )
        if not self.training:
            self._kept.setdefault(name, []).append(float(kept.sum(dim=1).mean()))
        return weights

    def auxiliary_loss(self, task: str) -> torch.Tensor | None:
        return self._auxiliary.get(task)

    def routing_statistics(self) -> dict[str, float]:
        """Mean number of experts kept per task over the evaluation forwards since the last call."""
        stats = {name: sum(v) / len(v) for name, v in self._kept.items() if v}
        self._kept = {}
        return stats

    # ----- forward --------------------------------------------------------------------------
    def representation(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The shared features the gates and experts read: the backbone's stride-4 and final maps
        and, when a segmentation task is requested, the shared ASPP output ("-UB" strategies)."""
        tasks = self._check_tasks(tasks)
        low, high = self.backbone(self.input_normalization(image))
        self._input_size = tuple(image.shape[-2:])  # the dense heads up-sample to it
        shared = {"low": low, "high": high}
        if self.aspp is not None and any(t in self.dense_tasks for t in tasks):
            shared["aspp"] = self.aspp(high)
        return shared

    def heads(self, shared: dict[str, torch.Tensor], tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = self._check_tasks(tasks)
        pooled: dict[str, torch.Tensor] = {key: shared[key].mean(dim=(-2, -1)) for key in ("high", "aspp") if key in shared}
        size = self._input_size
        outputs = {}
        for name in tasks:
            read = "aspp" if name in self.dense_tasks else "high"
            weights = self._route(name, torch.sigmoid(self.gates[name](pooled[read])))
            if name in self.dense_tasks:
                expert_outputs = torch.stack(
                    [e(shared["aspp"], shared["low"]) for e in self.experts_of(name)], dim=1
                )  # (B, E, C, h, w)
                mixed = (weights[:, :, None, None, None] * expert_outputs).sum(dim=1)
                outputs[name] = shape_output(resize(mixed, size), self.task_by_name[name])
            else:
                expert_outputs = torch.stack([e(shared["high"]) for e in self.experts_of(name)], dim=1)  # (B, E, C)
                outputs[name] = shape_output((weights[:, :, None] * expert_outputs).sum(dim=1), self.task_by_name[name])
        return outputs

    def experts_of(self, task: str) -> nn.ModuleList:
        return cast(nn.ModuleList, self.experts[task])

    def forward(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.heads(self.representation(image, tasks), tasks)

    def path_modules(self, task: str) -> list[nn.Module]:
        if task not in self.experts:
            raise KeyError(f"MoEDeepLabV3Plus has no task {task!r}; it has {list(self.task_names)}.")
        shared = [self.backbone] + ([self.aspp] if self.aspp is not None and task in self.dense_tasks else [])
        return shared + [self.experts[task], self.gates[task]]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Roy 2025 trains the backbone at a tenth of the learning rate (``optim`` parameter groups)."""
        return list(self.backbone.parameters())
