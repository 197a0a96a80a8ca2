"""OFA-KD: adaptive-target distillation of the logits and of projector branches on the student's stages
(Hao et al., NeurIPS 2023, arXiv 2310.19444; official code Hao840/OFAKD; docs/methods.md §2.4, §12.5)."""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, PrepareContext


def ofa_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, eps: float, temperature: float = 1.0,
    exponent_on_nontarget: bool = True,
) -> torch.Tensor:
    """`-(1/B) Σ_i Σ_c w_ic · log q_ic` on logits `[B, C]`, labels `[B]`, with `p = softmax(z_t/T)`, `q = softmax(z/T)`.

    `w = (p + e_y)^ε − e_y` (the code): the target class weighs `(1 + p_y)^ε − 1`, every other class
    `p_c^ε`; the weights are not renormalised. `exponent_on_nontarget=False` raises only the target
    term to ε (non-target weight `p_c`). ε = 1 is the KD cross-entropy `−Σ_c p_c log q_c` either way.
    The teacher is a constant. `log q` is a log-softmax (the code takes `log(softmax)`, −inf when q underflows).
    """
    p = (teacher_logits.detach().float() / temperature).softmax(dim=-1)
    one_hot = F.one_hot(labels, p.shape[-1]).to(p.dtype)
    if exponent_on_nontarget:
        weights = (p + one_hot) ** eps - one_hot
    else:
        weights = torch.where(one_hot.bool(), (1 + p) ** eps - 1, p)
    log_q = (student_logits.float() / temperature).log_softmax(dim=-1)
    return -(weights * log_q).sum(dim=-1).mean()


class OFA(Objective):
    """`L = gt_weight · CE(y, z_s) + kd_weight · L_OFA(z_s; ε_last) + ofa_weight · Σ_k L_OFA(proj_k(f_k); ε_k)`

    (`ofa_loss` against the teacher's final logits `[B, C]`). `f_k` is the student's stage k
    (1-based, `features["stages"]`: `[B, C, H, W]` for CNNs, `[B, tokens, D]` for ViTs) and `proj_k`
    its projector (`kdlab.models.ofa_projectors`), built for the student and teacher when fitting
    starts and trained with the student. `stages`: the stages used (null: every stage the student
    has; the code's default is all four of a four-stage network). `eps`: one ε for every term, or
    one per stage followed by the one of the final logits (the code's `--ofa-eps`).

    No divergence slot: the adaptive target is the method. Published defaults (OFAKD `train.py`,
    README): weights 1, 1, 1, T = 1, ε = 1 on CIFAR-100 (1.5 on ImageNet).
    """

    needs_features = True

    def __init__(
        self,
        *,
        eps: float | Sequence[float],
        stages: Sequence[int] | None,
        temperature: float,
        gt_weight: float,
        kd_weight: float,
        ofa_weight: float,
        exponent_on_nontarget: bool,
    ) -> None:
        super().__init__()
        self.eps = [float(eps)] if isinstance(eps, (int, float)) else [float(value) for value in eps]
        if not self.eps or min(self.eps) <= 0:
            raise ConfigError(f"objective.eps must be a number > 0 or a non-empty list of them, got {eps!r}")
        if temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {temperature}")
        self.stages = None if stages is None else [int(stage) for stage in stages]
        self.temperature, self.gt_weight, self.kd_weight, self.ofa_weight = temperature, gt_weight, kd_weight, ofa_weight
        self.exponent_on_nontarget = exponent_on_nontarget
        self.projectors: nn.ModuleDict | None = None
        self.stage_eps: list[float] = []

    def prepare(self, context: PrepareContext) -> None:
        """Choose the stages, pair each with its ε and build its projector from example features of both models."""
        if context.teacher is None:
            raise ConfigError("OFA distils towards a teacher's logits: it needs a regime with a teacher")
        student = context.example_features(context.model)
        teacher_dim = context.example_features(context.teacher)["penultimate"].shape[-1]
        count = len(student["stages"])
        stages = list(range(1, count + 1)) if self.stages is None else self.stages
        if not count and stages:
            raise ConfigError(f"OFA projects the student's stages, but {type(context.model).__name__} returns none: use a kdlab vision model with stages")
        if any(not 1 <= stage <= count for stage in stages):
            raise ConfigError(f"objective.stages={stages}: the student has stages 1..{count}")
        if len(self.eps) not in (1, len(stages) + 1):
            raise ConfigError(f"objective.eps needs 1 or {len(stages) + 1} values (one per stage, then the logits'), got {self.eps}")
        eps = self.eps * (len(stages) + 1) if len(self.eps) == 1 else self.eps
        self.stage_eps = eps
        from kdlab.models.ofa_projectors import stage_projector  # here: torchvision loads when a projector is built

        prefix_tokens = getattr(context.model, "num_prefix_tokens", 0)
        student_dim = student["penultimate"].shape[-1]
        self.projectors = nn.ModuleDict({
            str(stage): stage_projector(student["stages"][stage - 1], stage, count, student_dim, teacher_dim, prefix_tokens, context.num_classes)
            for stage in stages
        })

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.projectors is None:
            raise RuntimeError("OFA.prepare(context) must run before the loss (the module calls it when fitting starts)")
        student, teacher, labels = outputs["logits"], outputs["teacher_logits"], batch["label"]
        stages = outputs["features"]["stages"]
        branch = [
            ofa_loss(projector(stages[int(stage) - 1]), teacher, labels, eps, self.temperature, self.exponent_on_nontarget)
            for (stage, projector), eps in zip(self.projectors.items(), self.stage_eps)
        ]
        ofa = torch.stack(branch).sum() if branch else student.new_zeros(())
        kd = ofa_loss(student, teacher, labels, self.stage_eps[-1], self.temperature, self.exponent_on_nontarget)
        gt = F.cross_entropy(student.float(), labels)
        loss = self.gt_weight * gt + self.kd_weight * kd + self.ofa_weight * ofa
        return loss, {"ce": gt.detach(), "kd": kd.detach(), "ofa": ofa.detach()}
