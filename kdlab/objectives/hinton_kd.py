"""Hinton knowledge distillation (Hinton et al. 2015, arXiv 1503.02531), any divergence."""

from typing import Any

import torch
import torch.nn.functional as F

from kdlab.divergences import Divergence
from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, OpenSlot


class HintonKD(Objective):
    """`L = ce_weight · CE(y, softmax(z_s)) + kd_weight · T² · D(softmax(z_t/T) ‖ softmax(z_s/T))`.

    Logits `[B, C]`, labels `[B]`. `D` is the divergence slot, any registered divergence (forward KL
    in the paper), reduced as a mean over the batch of its sum over classes ("batchmean").
    Published defaults (mdistiller, CIFAR-100): T=4, ce_weight=0.1, kd_weight=0.9; ImageNet: T=1, 0.5, 0.5.
    """

    divergence_slot = OpenSlot()

    def __init__(self, divergence: Divergence, *, temperature: float, ce_weight: float, kd_weight: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {temperature}")
        self.divergence = self.divergence_slot.bind("HintonKD", divergence)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student, teacher = outputs["logits"], outputs["teacher_logits"]
        ce = F.cross_entropy(student.float(), batch["label"])
        kd = self.temperature**2 * self.divergence(student, teacher, temperature=self.temperature)
        loss = self.ce_weight * ce + self.kd_weight * kd
        return loss, {"ce": ce.detach(), "kd": kd.detach()}
