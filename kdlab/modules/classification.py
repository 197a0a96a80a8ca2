"""What the classification regimes (teacher/scratch, frozen-teacher and online distillation) share:
the models' logits (and features), the metric panel, the label-space checks."""

from typing import Any

import lightning as L
import torch
from torch import nn

from kdlab.checks import check_features, check_label_spaces
from kdlab.metrics import ClassificationPanel
from kdlab.modules.base import Batch, TrainingModule
from kdlab.objectives.base import Objective


class ClassifierModule(TrainingModule):
    """Base of the classification regimes; subclasses write `model_outputs(batch, split) ->
    {"logits": [B, C], ...}` (distillation adds `"teacher_logits"`).

    Batches are `{"input", "label" [B], "index" [B]}`. An objective with `needs_features` gets every
    model called with `return_features=True`: outputs gain `"features"` (and `"teacher_features"`),
    the dict `{"penultimate": [B, d], "stages": [...]}` of kdlab vision models.
    Logged per evaluation epoch: `kdlab.metrics.ClassificationPanel` (`acc`, `top5`, `ece`, and with
    a teacher `teacher_acc`, `teacher_ece`, `agreement`, `kl`, `rkl`, `js`, `tvd`); a datamodule with
    `task_metrics()` (GLUE: F1, Matthews correlation) adds its metrics of the predicted classes.
    """

    batches = "labelled"

    def __init__(self, model: nn.Module, objective: Objective, optimizer: Any, num_classes: int, scheduler: Any | None = None) -> None:
        super().__init__(model, objective, optimizer, num_classes, scheduler)
        self.metrics = nn.ModuleDict({split: ClassificationPanel(num_classes) for split in ("val", "test")})
        self.task_metrics = nn.ModuleDict()

    @classmethod
    def check_models(
        cls, datamodule: L.LightningDataModule, num_classes: int | None, student: nn.Module, teacher: nn.Module | None, objective: Objective
    ) -> None:
        """Student, teacher and data agree on the label space; feature objectives get models with features."""
        check_label_spaces(datamodule, num_classes, student, teacher)
        if objective.needs_features:
            check_features(type(objective).__name__, student, teacher)

    def setup(self, stage: str) -> None:
        task_metrics = getattr(self.trainer.datamodule, "task_metrics", None)
        if task_metrics is not None and not self.task_metrics:
            self.task_metrics = nn.ModuleDict({split: nn.ModuleDict(task_metrics()) for split in ("val", "test")})
        super().setup(stage)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def run_model(self, model: nn.Module, inputs: torch.Tensor, prefix: str = "") -> dict[str, Any]:
        """`{prefix + "logits": [B, C]}`, plus `prefix + "features"` when the objective needs features."""
        if not self.objective.needs_features:
            return {f"{prefix}logits": model(inputs)}
        logits, features = model(inputs, return_features=True)
        return {f"{prefix}logits": logits, f"{prefix}features": features}

    def batch_size(self, batch: Batch) -> int:
        return len(batch["label"])

    def evaluate(self, batch: Batch, split: str) -> None:
        outputs = self.model_outputs(batch, split)
        self.metrics[split].update(outputs["logits"], batch["label"], outputs.get("teacher_logits"))
        for metric in self.task_metrics[split].values() if self.task_metrics else ():
            metric.update(outputs["logits"].argmax(dim=-1), batch["label"])

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        values = self.metrics[split].compute()
        self.metrics[split].reset()
        if self.task_metrics:
            values |= {name: metric.compute() for name, metric in self.task_metrics[split].items()}
            for metric in self.task_metrics[split].values():
                metric.reset()
        return values
