"""Accuracy of a classifier and, when a teacher is present, how closely the student follows it."""

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from kdlab.divergences import get


class ClassificationPanel(nn.Module):
    """Epoch-level metrics of one evaluation split.

    Names (the keys of `compute()`, logged as `<split>/<name>`):
    - `acc`: top-1 accuracy of the trained model against the labels;
    - with teacher logits: `teacher_acc`, `agreement` (fraction of samples where student and
      teacher top-1 classes match) and `kl` (mean over samples of KL(p_teacher ‖ q_student) at T=1).
    Inputs: logits `[B, C]`, labels `[B]`.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.acc = MulticlassAccuracy(num_classes, average="micro")
        self.teacher_acc = MulticlassAccuracy(num_classes, average="micro")
        self.agreement = MulticlassAccuracy(num_classes, average="micro")
        self.kl = MeanMetric()
        self.forward_kl = get("fkl")
        self.has_teacher = False

    def update(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> None:
        self.acc.update(logits, labels)
        if teacher_logits is None:
            return
        self.has_teacher = True
        self.teacher_acc.update(teacher_logits, labels)
        self.agreement.update(logits, teacher_logits.argmax(dim=-1))
        self.kl.update(self.forward_kl(logits, teacher_logits, reduction="none"))

    def compute(self) -> dict[str, torch.Tensor]:
        values = {"acc": self.acc.compute()}
        if self.has_teacher:
            values |= {
                "teacher_acc": self.teacher_acc.compute(),
                "agreement": self.agreement.compute(),
                "kl": self.kl.compute(),
            }
        return values

    def reset(self) -> None:
        for metric in (self.acc, self.teacher_acc, self.agreement, self.kl):
            metric.reset()
