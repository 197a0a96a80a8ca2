"""Accuracy and calibration of a classifier and, when a teacher is present, how closely the
student follows it."""

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from kdlab.divergences import get

ECE_BINS = 15
# The divergence panel: metric name -> divergence registry name. `kl` is the forward KL(p_teacher || q_student).
DIVERGENCES = {"kl": "fkl", "rkl": "rkl", "js": "js", "tvd": "tvd"}


class ClassificationPanel(nn.Module):
    """Epoch-level metrics of one evaluation split (torchmetrics: synchronised across DDP processes).

    Names (the keys of `compute()`, logged as `<split>/<name>`):
    - `acc`, `top5` (only when `num_classes > 5`): top-1 / top-5 accuracy of the trained model;
    - `ece`: expected calibration error of its softmax confidence, 15 equal-width bins,
      `sum_b |B_b|/n * |acc_b - conf_b|`;
    - with teacher logits: `teacher_acc`, `teacher_ece` (the same for the teacher: constant for a
      frozen teacher, a learning curve for online KD), `agreement` (fraction of samples whose
      student and teacher top-1 classes match) and the divergence panel at T=1, each the mean over
      samples of D(p_teacher, q_student): `kl` (forward KL(p || q)), `rkl` (KL(q || p)), `js`
      (Jensen-Shannon) and `tvd` (total variation), whatever divergence was trained.
    Inputs: logits `[B, C]`, labels `[B]`.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.student = nn.ModuleDict(_accuracy_and_calibration(num_classes, top5=num_classes > 5))
        self.teacher = nn.ModuleDict(_accuracy_and_calibration(num_classes, top5=False))
        self.agreement = MulticlassAccuracy(num_classes, average="micro")
        self.divergences = nn.ModuleDict({name: MeanMetric() for name in DIVERGENCES})
        self.divergence_fns = {name: get(registry_name) for name, registry_name in DIVERGENCES.items()}
        self.has_teacher = False

    def update(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> None:
        _update(self.student, logits, labels)
        if teacher_logits is None:
            return
        self.has_teacher = True
        _update(self.teacher, teacher_logits, labels)
        self.agreement.update(logits, teacher_logits.argmax(dim=-1))
        for name, divergence in self.divergence_fns.items():
            self.divergences[name].update(divergence(logits, teacher_logits, reduction="none"))

    def compute(self) -> dict[str, torch.Tensor]:
        values = {name: metric.compute() for name, metric in self.student.items()}
        if self.has_teacher:
            values |= {f"teacher_{name}": metric.compute() for name, metric in self.teacher.items()}
            values["agreement"] = self.agreement.compute()
            values |= {name: metric.compute() for name, metric in self.divergences.items()}
        return values

    def reset(self) -> None:
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()


def _accuracy_and_calibration(num_classes: int, top5: bool) -> dict[str, Metric]:
    metrics: dict[str, Metric] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "ece": MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1"),
    }
    if top5:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return metrics


def _update(metrics: nn.ModuleDict, logits: torch.Tensor, labels: torch.Tensor) -> None:
    probabilities = logits.float().softmax(dim=-1)
    for metric in metrics.values():
        metric.update(probabilities, labels)
