"""Hinton knowledge distillation (Hinton et al. 2015, arXiv 1503.02531), any divergence."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.divergences import get

Divergence = Callable[..., torch.Tensor]


class HintonKD(nn.Module):
    """`L = ce_weight · CE(y, softmax(z_s)) + kd_weight · T² · D(softmax(z_t/T) ‖ softmax(z_s/T))`.

    `D` is any per-sample divergence of `kdlab.divergences` (forward KL in the paper), reduced as a
    mean over the batch of its sum over classes ("batchmean"). Published defaults (mdistiller,
    CIFAR-100): T=4, ce_weight=0.1, kd_weight=0.9; ImageNet: T=1, 0.5, 0.5.
    """

    def __init__(
        self,
        divergence: Divergence | None = None,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.divergence = divergence if divergence is not None else get("fkl")
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student, teacher = outputs["logits"], outputs["teacher_logits"]
        ce = F.cross_entropy(student.float(), batch["label"])
        kd = self.temperature**2 * self.divergence(student, teacher, temperature=self.temperature)
        loss = self.ce_weight * ce + self.kd_weight * kd
        return loss, {"ce": ce.detach(), "kd": kd.detach()}
