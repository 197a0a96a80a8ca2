"""Symmetric distances and chi^2 / Cauchy-Schwarz divergences between teacher p and student q."""

import torch
from torch import Tensor

from kdlab.divergences._core import log_probs, reduce
from kdlab.divergences.registry import divergence
from kdlab.divergences.fdiv import F_FUNCTIONS, f_divergence


@divergence("tvd")
def tvd(
    student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """TV(p,q) = 1/2 sum_c |p_c - q_c|

    Total variation distance, in [0, 1] (DistiLLM's scale; SinKD's baseline also divides by C).
    Shapes, `mask`, `temperature` and `reduction` as in `fkl`.
    """
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    return reduce(0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1), mask, reduction)


@divergence("hellinger")
def hellinger(
    student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """H^2(p,q) = 1/2 sum_c (sqrt(p_c) - sqrt(q_c))^2 = 1 - sum_c sqrt(p_c q_c)

    Squared Hellinger distance, in [0, 1], computed as -expm1(logsumexp((log p + log q) / 2)).
    Shapes, `mask`, `temperature` and `reduction` as in `fkl`.
    """
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    log_affinity = torch.logsumexp(0.5 * (log_p + log_q), dim=-1)
    return reduce(-torch.expm1(log_affinity), mask, reduction)


@divergence("chi2")
def chi2(
    student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """chi^2(p||q) = sum_c (p_c - q_c)^2 / q_c

    Pearson chi^2 of the teacher p from the student q, = `fdiv(f="pearson")`: computed as
    sum_c q_c expm1(log(p_c/q_c))^2 with |log(p_c/q_c)| clamped to `MAX_LOG_RATIO` (it is unbounded
    where the student puts vanishing mass on teacher-supported classes). Shapes, `mask`,
    `temperature` and `reduction` as in `fkl`.
    """
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    return reduce(f_divergence(log_q, log_p, F_FUNCTIONS["pearson"]), mask, reduction)


@divergence("cs")
def cs(
    student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """D_CS(p,q) = -log(sum_c p_c q_c / sqrt(sum_c p_c^2 sum_c q_c^2))

    Cauchy-Schwarz divergence (discrete plug-in, docs/methods.md §1.10): symmetric, >= 0, zero iff p = q;
    each sum is a logsumexp of log-probabilities. Shapes, `mask`, `temperature` and `reduction` as
    in `fkl`.
    """
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    cross = torch.logsumexp(log_p + log_q, dim=-1)
    value = 0.5 * (torch.logsumexp(2 * log_p, dim=-1) + torch.logsumexp(2 * log_q, dim=-1)) - cross
    return reduce(value, mask, reduction)
