"""What the dense scene networks share: input normalisation, dense tasks only, ``forward`` as
``heads(representation(image))``, outputs at the input resolution in the shapes of
:func:`~medmtl.models.heads.shape_output`, and the intermediate predictions kept for deep
supervision. Subclasses implement ``representation``, ``heads`` and ``path_modules``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from medmtl.errors import ConfigError
from medmtl.models.backbones import InputNormalization
from medmtl.models.base import MultiTaskNet
from medmtl.models.heads import shape_output, upsample_to
from medmtl.tasks import Task


class DenseSceneNet(MultiTaskNet):
    def __init__(self, tasks: Sequence[Task], input_normalization: str = "imagenet"):
        super().__init__()
        image_level = [t.name for t in tasks if not t.is_dense]
        if image_level:
            raise ConfigError(
                f"{type(self).__name__} predicts per pixel; the image-level tasks {image_level} need another "
                "model (e.g. model=unet_vgg16 or model=umedpt)."
            )
        self.task_names = tuple(t.name for t in tasks)
        self.task_by_name = {t.name: t for t in tasks}
        self.normalize = InputNormalization(input_normalization)
        self._intermediate: dict[str, list[torch.Tensor]] = {}

    def forward(self, image: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.heads(self.representation(image, tasks), tasks)

    def finish(self, logits: Mapping[str, torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
        """Task logits up-sampled to the input ``size`` and shaped per task."""
        return {name: shape_output(upsample_to(value, size), self.task_by_name[name]) for name, value in logits.items()}

    def keep_intermediate(
        self, predictions: Mapping[str, Sequence[torch.Tensor]], size: Sequence[int], tasks: Sequence[str]
    ) -> None:
        """Store the requested tasks' intermediate predictions (deep supervision) of this forward."""
        self._intermediate = {
            name: [shape_output(upsample_to(p, size), self.task_by_name[name]) for p in values]
            for name, values in predictions.items()
            if name in tasks
        }

    def deep_supervision(self, task: str) -> list[torch.Tensor]:
        return self._intermediate.get(task, [])
