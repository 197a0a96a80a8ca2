"""PLD: list-wise Plackett–Luce distillation (Bassam, Zhu, Bian, 2025, arXiv 2506.12542; docs/methods.md §2.7).

No official code is public: the loss is the paper's weighted Plackett–Luce form; the teacher
temperature of the confidence weights (τ = 1) and their use without renormalisation are kdlab's
assumptions [unverified], as is the `top_k` truncation (a kdlab extension for large C).
"""

from typing import Any

import torch

from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective


def teacher_permutation(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """π* per row: the label first, then the other classes by teacher logit, highest first: `[B, C]` class ids.

    Ties keep the class order (stable sort)."""
    ranking_scores = teacher_logits.float().scatter(-1, labels[:, None], float("inf"))
    return ranking_scores.argsort(dim=-1, descending=True, stable=True)


def plackett_luce(ranked_scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`Σ_k w_k [log Σ_{j ≥ k} exp(s_j) − s_k]` per row of scores `[B, K]` already in ranked order:
    with unit weights, the negative log Plackett–Luce probability of that order (ListMLE). `[B]`."""
    suffix_lse = ranked_scores.flip(-1).logcumsumexp(dim=-1).flip(-1)
    return (weights * (suffix_lse - ranked_scores)).sum(dim=-1)


def pld_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, teacher_temperature: float, top_k: int | None
) -> torch.Tensor:
    """`(1/B) Σ_i Σ_{k ≤ K} α_ik [ log Σ_{j ≥ k} exp(s_{i,π*_j}) − s_{i,π*_k} ]` on logits `[B, C]`, labels `[B]`.

    `π*` = `teacher_permutation`, `s` the student logits, `α_ik = softmax(z_t/τ)_{π*_k}` the teacher's
    probability of the class ranked k (a constant: no gradient flows to the teacher), `K = C` or
    `top_k`. The inner sum always runs over every class not yet placed, so a truncated list is the
    top-K Plackett–Luce likelihood. The k = 1 term is `p_y · CE(y, softmax(s))`; with every α = 1 the
    loss is ListMLE of π*. The suffix log-sum-exp is `flip → logcumsumexp → flip` (stable).
    """
    order = teacher_permutation(teacher_logits, labels)
    ranked_student = student_logits.float().gather(-1, order)  # [B, C], s_{π*_k}
    weights = (teacher_logits.detach().float() / teacher_temperature).softmax(dim=-1).gather(-1, order)
    suffix_lse = ranked_student.flip(-1).logcumsumexp(dim=-1).flip(-1)
    terms = weights * (suffix_lse - ranked_student)
    if top_k is not None:
        terms = terms[:, :top_k]
    return terms.sum(dim=-1).mean()


class PLD(Objective):
    """`L = L_PLD(z_s, z_t, y)` (`pld_loss`): one list-wise loss in place of CE + KD; logits `[B, C]`, labels `[B]`.

    No divergence slot: the method is the Plackett–Luce likelihood of the teacher-optimal ranking.
    `teacher_temperature` τ of the confidence weights: 1 by default [unverified]; `top_k`: null
    scores the whole list, an integer K ≥ 1 only its first K places (kdlab extension).
    """

    def __init__(self, *, teacher_temperature: float, top_k: int | None) -> None:
        super().__init__()
        if teacher_temperature <= 0:
            raise ConfigError(f"objective.teacher_temperature must be > 0, got {teacher_temperature}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"objective.top_k must be null or an integer >= 1, got {top_k!r}")
        self.teacher_temperature, self.top_k = teacher_temperature, top_k

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student, teacher, labels = outputs["logits"], outputs["teacher_logits"], batch["label"]
        loss = pld_loss(student, teacher, labels, self.teacher_temperature, self.top_k)
        ce = torch.nn.functional.cross_entropy(student.detach().float(), labels)
        return loss, {"pld": loss.detach(), "ce": ce}
