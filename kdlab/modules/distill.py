"""Offline distillation: a frozen teacher guides a student."""

from typing import Any

import torch
from torch import nn

from kdlab.modules.base import Batch
from kdlab.modules.classification import ClassifierModule


class DistillModule(ClassifierModule):
    """Trains `model` (the student) with `objective(outputs, batch)` where outputs hold the
    student's `logits` and the frozen teacher's `teacher_logits` (both `[B, C]`).

    The teacher is frozen (`freeze`): eval mode, `requires_grad=False`, run under `torch.no_grad`,
    never given to the optimiser, left out of checkpoints (the run takes it from the teacher cache).
    A batch that carries `teacher_logits` (replayed from the teacher-output cache, `kdlab.teacher_outputs`)
    is not given to the teacher: its stored logits are the outputs'.
    """

    teacher_role = "frozen"

    def __init__(self, model: nn.Module, teacher: nn.Module, **kwargs: Any) -> None:
        super().__init__(model=model, **kwargs)
        self.freeze("teacher", teacher)

    def model_outputs(self, batch: Batch, split: str) -> dict[str, Any]:
        if "teacher_logits" in batch:
            return self.run_model(self.model, batch["input"]) | {"teacher_logits": batch["teacher_logits"]}
        with torch.no_grad():
            teacher = self.run_model(self.teacher, batch["input"], prefix="teacher_")
        return self.run_model(self.model, batch["input"]) | teacher
