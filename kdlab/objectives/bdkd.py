"""Balanced-Divergence online KD (BD-KD; Amara et al., arXiv 2212.12965): teacher and student learn together."""

from typing import Any

import torch
import torch.nn.functional as F

from kdlab.divergences import get
from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective

WEIGHTINGS = ("hard_switch", "sigmoid")


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`H(softmax(z/T)) = -Σ_c q_c log q_c` per row: `[B, C]` -> `[B]`."""
    log_q = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(log_q.exp() * log_q).sum(dim=-1)


def reverse_kl_weights(entropy_gap: torch.Tensor, weighting: str, sharpness: float) -> torch.Tensor:
    """The per-sample weight `w^r` of the reverse KL (the forward KL gets `1 - w^r`) from the entropy
    gap `ΔH = H(q_s) - H(q_t)`: `hard_switch` `1[ΔH > 0]`, `sigmoid` `σ(sharpness · ΔH)`.
    These mappings are kdlab's placeholders (docs/methods.md §5.1): the paper's exact mapping is unverified."""
    if weighting == "hard_switch":
        return (entropy_gap > 0).to(entropy_gap.dtype)
    return torch.sigmoid(sharpness * entropy_gap)


class BDKD(Objective):
    """Student and teacher losses of online BD-KD; returns their sum (see `OnlineDistillModule`).

    With `q_s = softmax(z_s/T)`, `q_t = softmax(z_t/T)` and the other network's output detached in
    each loss:

    - student: `L_S = CE(y, z_s) + λ_S · T² · (1/B) Σ_i [(1 - w^r_i) · KL(q_t ‖ q_s) + w^r_i · KL(q_s ‖ q_t)]`,
      `w^r_i` from the sample's entropy gap `ΔH_i = H(q_s,i) - H(q_t,i)` (`reverse_kl_weights`):
      a student less confident than the teacher is pulled mode-seeking (reverse KL), a more
      confident one mass-covering (forward KL);
    - teacher: `L_T = CE(y, z_t) + λ_T · T² · KL(q_t ‖ q_s)` (reverse KL from the teacher's side).

    Verification status (docs/methods.md §5.1, §13): the structure — sample-wise entropy-gap weighting of
    forward and reverse KL for the student, reverse KL as the teacher's regulariser — is from the
    abstract and a summary of the paper; the weighting function, λ's and T could not be checked
    against the paper (no code is public), so `weighting`, `sharpness`, `student_kd_weight`,
    `teacher_kd_weight` and `temperature` are flags with unverified defaults. No divergence slot:
    the method is defined by its balance of forward and reverse KL.
    """

    def __init__(
        self, *, temperature: float, student_kd_weight: float, teacher_kd_weight: float, weighting: str, sharpness: float
    ) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"BD-KD objective.weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.student_kd_weight, self.teacher_kd_weight = student_kd_weight, teacher_kd_weight
        self.weighting, self.sharpness = weighting, sharpness
        self.forward_kl, self.reverse_kl = get("fkl"), get("rkl")

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student, teacher, labels = outputs["logits"], outputs["teacher_logits"], batch["label"]
        T, t2 = self.temperature, self.temperature**2
        student_ce = F.cross_entropy(student.float(), labels)
        teacher_ce = F.cross_entropy(teacher.float(), labels)

        gap = (entropy(student, T) - entropy(teacher, T)).detach()
        w_reverse = reverse_kl_weights(gap, self.weighting, self.sharpness)
        fixed_teacher = teacher.detach()
        balanced = (1 - w_reverse) * self.forward_kl(student, fixed_teacher, temperature=T, reduction="none") + w_reverse * (
            self.reverse_kl(student, fixed_teacher, temperature=T, reduction="none")
        )
        student_kd = t2 * balanced.mean()
        # KL(q_t ‖ q_s) with the teacher in the trained slot: the reverse KL of the teacher towards the student.
        teacher_kd = t2 * self.reverse_kl(teacher, student.detach(), temperature=T)

        student_loss = student_ce + self.student_kd_weight * student_kd
        teacher_loss = teacher_ce + self.teacher_kd_weight * teacher_kd
        return student_loss + teacher_loss, {
            "ce": student_ce.detach(),
            "kd": student_kd.detach(),
            "reverse_kl_share": w_reverse.mean(),
            "entropy_gap": gap.mean(),
            "teacher_ce": teacher_ce.detach(),
            "teacher_kd": teacher_kd.detach(),
        }
