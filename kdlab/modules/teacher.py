"""Supervised training of one model: teachers, the `scratch` student baseline, self-distillation."""

from typing import Any

from kdlab.modules.base import Batch
from kdlab.modules.classification import ClassifierModule


class TeacherModule(ClassifierModule):
    """Trains `model` alone with `objective`: cross-entropy for teachers and `scratch`, a
    self-distillation objective (USKD, PS-KD) that needs no teacher. Outputs: `logits [B, C]`."""

    def model_outputs(self, batch: Batch, split: str) -> dict[str, Any]:
        return self.run_model(self.model, batch["input"])
