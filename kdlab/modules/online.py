"""Online distillation: teacher and student learn together from scratch (BD-KD, DML-style)."""

from collections.abc import Iterator
from typing import Any

from torch import nn

from kdlab.modules.base import Batch
from kdlab.modules.classification import ClassifierModule


class OnlineDistillModule(ClassifierModule):
    """Trains `model` (the student) and `teacher` at the same time, from one forward pass of each.

    Outputs hold `logits` and `teacher_logits` (both `[B, C]`, both with gradients); the objective
    returns the sum of the student's and the teacher's losses, each written so that it does not
    depend on the other network's parameters (the other's prediction is detached). Then one
    backward pass of the sum gives every network exactly the gradient of its own loss, and **one
    optimiser over both networks** (plus the objective's parameters) updates them simultaneously.
    That is the same update as two optimisers stepping on the same batch, with no manual
    optimisation: gradient clipping, accumulation, mixed precision, DDP and checkpointing work as
    for every other regime. (Two optimisers would only be needed for different optimiser settings
    per network, which the methods here do not use.)

    Validation and test metrics cover both networks: `acc` is the student's, `teacher_acc` (and the
    teacher's calibration where the panel reports it) the teacher's; the checkpoint holds both.
    """

    teacher_role = "online"

    def __init__(self, model: nn.Module, teacher: nn.Module, **kwargs: Any) -> None:
        super().__init__(model=model, **kwargs)
        self.teacher = teacher

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.teacher.train()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's, the objective's and the teacher's parameters."""
        yield from super().trainable_parameters()
        yield from self.teacher.parameters()

    def model_outputs(self, batch: Batch, split: str) -> dict[str, Any]:
        return self.run_model(self.model, batch["input"]) | self.run_model(self.teacher, batch["input"], prefix="teacher_")
