"""Offline distillation: a frozen teacher guides a student."""

from typing import Any

import torch
from torch import Tensor, nn

from kdlab.modules.base import Batch
from kdlab.modules.classification import ClassifierModule


class DistillModule(ClassifierModule):
    """Trains `model` (the student) with `objective(outputs, batch)` where outputs hold the
    student's `logits` and the frozen teacher's `teacher_logits` (both `[B, C]`).

    The teacher is frozen (`freeze`): eval mode, `requires_grad=False`, run under `torch.no_grad`,
    never given to the optimiser, left out of checkpoints (the run takes it from the teacher cache).
    A batch that carries `teacher_logits` (replayed from the teacher-output cache, `kdlab.teacher_outputs`)
    is not given to the teacher: its stored logits are the outputs'. On the validation split, which is
    the same un-augmented samples every epoch, the teacher runs once per sample: its logits are kept by
    sample index (`batch["index"]`) and reused by every later validation of the run.
    """

    teacher_role = "frozen"

    def __init__(self, model: nn.Module, teacher: nn.Module, **kwargs: Any) -> None:
        super().__init__(model=model, **kwargs)
        self.freeze("teacher", teacher)
        self.val_teacher_logits = LogitsBySample()

    def model_outputs(self, batch: Batch, split: str) -> dict[str, Any]:
        if "teacher_logits" in batch:
            return self.run_model(self.model, batch["input"]) | {"teacher_logits": batch["teacher_logits"]}
        if split == "val" and "index" in batch:
            return self.run_model(self.model, batch["input"]) | {"teacher_logits": self.val_teacher(batch)}
        with torch.no_grad():
            teacher = self.run_model(self.teacher, batch["input"], prefix="teacher_")
        return self.run_model(self.model, batch["input"]) | teacher

    def val_teacher(self, batch: Batch) -> Tensor:
        """The teacher's logits `[B, C]` on a validation batch: kept from an earlier validation, or computed and kept."""
        index = batch["index"]
        logits = self.val_teacher_logits.get(index)
        if logits is None:
            with torch.no_grad():
                logits = self.teacher(batch["input"])
            self.val_teacher_logits.put(index, logits)
        return logits


class LogitsBySample:
    """Logit rows stored by sample index: `put(index [B], logits [B, C])`, then `get(index)` gives those rows
    (None unless every index was put). Held in the logits' dtype on their device, grown as indices appear."""

    def __init__(self) -> None:
        self.rows: Tensor | None = None
        self.known: Tensor | None = None

    def get(self, index: Tensor) -> Tensor | None:
        if self.rows is None or len(index) == 0 or int(index.max()) >= len(self.rows) or not bool(self.known[index].all()):
            return None
        return self.rows[index]

    def put(self, index: Tensor, logits: Tensor) -> None:
        size = int(index.max()) + 1 if len(index) else 0
        if self.rows is None or size > len(self.rows):
            rows = logits.new_zeros(size, logits.shape[-1])
            known = torch.zeros(size, dtype=torch.bool, device=logits.device)
            if self.rows is not None:
                rows[: len(self.rows)], known[: len(self.known)] = self.rows, self.known
            self.rows, self.known = rows, known
        self.rows[index], self.known[index] = logits.detach(), True
