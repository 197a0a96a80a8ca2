"""Supervised training of one model: teachers, and the `scratch` student baseline."""

import torch
from torch import nn

from kdlab.modules.base import ClassifierModule


class TeacherModule(ClassifierModule):
    """Trains `model` alone with `objective` (cross-entropy for teachers and `scratch`)."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def model_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.model(batch["input"])}
