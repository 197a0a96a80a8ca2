"""Decoupled Knowledge Distillation (DKD; Zhao et al., CVPR 2022, arXiv 2203.08679)."""

from typing import Any

import torch
import torch.nn.functional as F

from kdlab.divergences import Divergence
from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, OpenSlot
from kdlab.objectives.targets import binary_log_probs, non_target


def decoupled_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    divergence: Divergence,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(TCKD, NCKD)` of logits `[B, C]` and labels `[B]`, reduced by `reduction` over the batch.

    With `p = softmax(z_t/T)`, `q = softmax(z_s/T)`, binary target/rest masses `b = [p_y, 1 - p_y]`
    and non-target renormalised `p̂ = softmax(z_t[¬y]/T)`:
    `TCKD = T² · D(b^p ‖ b^q)` and `NCKD = T² · D(p̂ ‖ q̂)`, `D` = KL in the paper. Both are computed
    in log space: the binary log-masses with `logsumexp` over the non-target log-probabilities, the
    non-target distributions from the logits with the target column removed (no masking constant).
    For KL, `KL(p ‖ q) = TCKD/T² + (1 - p_y) · NCKD/T²` per sample.
    """
    t2 = temperature**2
    tckd = t2 * divergence(
        binary_log_probs(student_logits / temperature, labels),
        binary_log_probs(teacher_logits / temperature, labels),
        reduction=reduction,
    )
    nckd = t2 * divergence(
        non_target(student_logits, labels), non_target(teacher_logits, labels), temperature=temperature, reduction=reduction
    )
    return tckd, nckd


class DKD(Objective):
    """`L = ce_weight · CE(y, q) + min((epoch + 1) / warmup_epochs, 1) · (alpha · TCKD + beta · NCKD)`.

    TCKD and NCKD as in `decoupled_terms`; the divergence slot (any registered divergence) replaces
    KL in both (forward KL is the paper). The warm-up counts epochs from 1 as mdistiller does, so the first epoch already has
    weight `1 / warmup_epochs`. Published defaults (mdistiller, CIFAR-100): alpha=1, beta=8, T=4,
    warmup 20 epochs, ce_weight=1; beta=2 for ResNet56→20 and ResNet110→32, beta=6 for VGG13→VGG8,
    VGG13→MobileNetV2 and WRN-40-2→WRN-16-2/40-1. ImageNet: alpha=1, beta=0.5, T=1, warmup 1.
    """

    divergence_slot = OpenSlot()

    def __init__(
        self, divergence: Divergence, *, alpha: float, beta: float, temperature: float, ce_weight: float, warmup_epochs: int
    ) -> None:
        super().__init__()
        if temperature <= 0 or warmup_epochs < 1:
            raise ConfigError(f"DKD needs objective.temperature > 0 and objective.warmup_epochs >= 1, got {temperature}, {warmup_epochs}")
        self.divergence = self.divergence_slot.bind("DKD", divergence)
        self.alpha, self.beta = alpha, beta
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.warmup_epochs = warmup_epochs

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student, teacher, labels = outputs["logits"], outputs["teacher_logits"], batch["label"]
        ce = F.cross_entropy(student.float(), labels)
        tckd, nckd = decoupled_terms(student, teacher, labels, self.temperature, self.divergence)
        warmup = min((outputs["progress"].epoch + 1) / self.warmup_epochs, 1.0)
        loss = self.ce_weight * ce + warmup * (self.alpha * tckd + self.beta * nckd)
        return loss, {"ce": ce.detach(), "tckd": tckd.detach(), "nckd": nckd.detach()}
