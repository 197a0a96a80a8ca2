"""Offline distillation: a frozen teacher guides a student."""

from typing import Any

import torch
from torch import nn

from kdlab.modules.base import ClassifierModule


class DistillModule(ClassifierModule):
    """Trains `model` (the student) with `objective(outputs, batch)` where outputs hold the
    student's `logits` and the frozen teacher's `teacher_logits` (both `[B, C]`).

    The teacher stays in eval mode (also when Lightning switches the module to train mode),
    runs under `torch.no_grad`, has `requires_grad=False` and is never given to the optimiser.
    """

    teacher_role = "frozen"

    def __init__(self, model: nn.Module, teacher: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.teacher = teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "DistillModule":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def model_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        with torch.no_grad():
            teacher = self.run_model(self.teacher, batch["input"], prefix="teacher_")
        return self.run_model(self.model, batch["input"]) | teacher
