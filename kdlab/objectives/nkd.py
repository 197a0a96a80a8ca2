"""Normalized KD (NKD; Yang et al., ICCV 2023, arXiv 2303.13005)."""

from typing import Any

import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective
from kdlab.objectives.targets import non_target, target_column


class NKD(Objective):
    """`L = ce_weight · CE(y, q) + L_t + L_nt` on logits `[B, C]` (mean over the batch):

    - `L_t = -p_y · log q_y` with `p = softmax(z_t)`, `q = softmax(z_s)` at T=1 (the teacher's
      target probability is a per-sample weight);
    - `L_nt = -gamma · λ² · Σ_{c≠y} p̂_c log q̂_c` with `p̂ = softmax(z_t[¬y]/λ)`, `q̂ = softmax(z_s[¬y]/λ)`
      (target column removed): a cross-entropy between the normalised non-target distributions,
      equal to their KL up to the teacher's entropy, a constant.

    The paper's code (yzd-v/cls_KD `nkd.py`) adds `L_t + L_nt` to the student's CE. Published
    defaults (cls_KD configs): CIFAR-100 λ=3, gamma=3.5; ImageNet ResNet34→ResNet18 λ=1, gamma=1.5.
    NKD has no divergence slot: its non-target term is this specific normalised cross-entropy.
    """

    def __init__(self, *, temperature: float, gamma: float, ce_weight: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {temperature}")
        self.temperature, self.gamma, self.ce_weight = temperature, gamma, ce_weight

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student, teacher, labels = outputs["logits"].float(), outputs["teacher_logits"].float().detach(), batch["label"]
        ce = F.cross_entropy(student, labels)
        teacher_target = target_column(teacher.softmax(dim=-1), labels)
        target = -(teacher_target * target_column(student.log_softmax(dim=-1), labels)).mean()
        lam = self.temperature
        p_hat = (non_target(teacher, labels) / lam).softmax(dim=-1)
        log_q_hat = (non_target(student, labels) / lam).log_softmax(dim=-1)
        non_target_loss = -self.gamma * lam**2 * (p_hat * log_q_hat).sum(dim=-1).mean()
        loss = self.ce_weight * ce + target + non_target_loss
        return loss, {"ce": ce.detach(), "nkd_target": target.detach(), "nkd_non_target": non_target_loss.detach()}
