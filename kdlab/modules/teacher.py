"""Supervised training of one model: teachers, the `scratch` student baseline, self-distillation."""

from typing import Any

import torch
from torch import nn

from kdlab.modules.base import ClassifierModule


class TeacherModule(ClassifierModule):
    """Trains `model` alone with `objective`: cross-entropy for teachers and `scratch`, a
    self-distillation objective (USKD, PS-KD) that needs no teacher."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def model_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return self.run_model(self.model, batch["input"])
