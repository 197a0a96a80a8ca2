"""Divergences to a mixture m of teacher p and student q; log m is a logsumexp of the two log-densities."""

import math

import torch
from torch import Tensor

from kdlab.divergences._core import check_param, kl, log_probs, reduce
from kdlab.divergences.registry import divergence


def log_mixture(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    """log(w a + (1 - w) b) = logsumexp(log w + log a, log(1 - w) + log b), for 0 < w < 1."""
    return torch.logaddexp(log_a + math.log(weight), log_b + math.log1p(-weight))


@divergence("js")
def js(
    student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """JS(p,q) = 1/2 KL(p||m) + 1/2 KL(q||m),  m = (p + q) / 2

    Jensen-Shannon divergence, symmetric and bounded by log 2 (= `gjsd` with beta = 1/2). Shapes,
    `mask`, `temperature` and `reduction` as in `fkl`.
    """
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    log_m = log_mixture(log_p, log_q, 0.5)
    return reduce(0.5 * (kl(log_p, log_m) + kl(log_q, log_m)), mask, reduction)


@divergence("gjsd")
def gjsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    beta: float = 0.5,
) -> Tensor:
    """GJSD_beta(p||q) = beta KL(p||m) + (1 - beta) KL(q||m),  m = beta p + (1 - beta) q

    Generalised JSD of GKD (Agarwal et al. 2024), with TRL's `generalized_jsd_loss` conventions:
    beta in [0, 1], and the end points are special-cased as beta = 0 -> KL(p||q) (fkl) and
    beta = 1 -> KL(q||p) (rkl), where the raw formula would vanish. DistiLLM's `js_distance(lambda)`
    is GJSD with beta = 1 - lambda. Shapes, `mask`, `temperature` and `reduction` as in `fkl`.
    """
    check_param("beta", beta, 0.0, 1.0)
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    if beta == 0:
        value = kl(log_p, log_q)
    elif beta == 1:
        value = kl(log_q, log_p)
    else:
        log_m = log_mixture(log_p, log_q, beta)
        value = beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)
    return reduce(value, mask, reduction)


@divergence("skl")
def skl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    alpha: float = 0.1,
) -> Tensor:
    """SKL_alpha(p||q) = KL(p || alpha p + (1 - alpha) q)

    Skew forward KL of DistiLLM (Ko et al. 2024), alpha in [0, 1]: alpha = 0 is fkl, alpha = 1 is 0.
    Kept as a true KL (DistiLLM's code logs the cross-entropy to the mixture, which differs by the
    constant H(p)). Shapes, `mask`, `temperature` and `reduction` as in `fkl`.
    """
    check_param("alpha", alpha, 0.0, 1.0)
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    log_m = log_q if alpha == 0 else log_p if alpha == 1 else log_mixture(log_p, log_q, alpha)
    return reduce(kl(log_p, log_m), mask, reduction)


@divergence("srkl")
def srkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    alpha: float = 0.1,
) -> Tensor:
    """SRKL_alpha(q||p) = KL(q || alpha q + (1 - alpha) p)

    Skew reverse KL of DistiLLM (Ko et al. 2024), alpha in [0, 1]: alpha = 0 is rkl, alpha = 1 is 0.
    Shapes, `mask`, `temperature` and `reduction` as in `fkl`.
    """
    check_param("alpha", alpha, 0.0, 1.0)
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    log_m = log_p if alpha == 0 else log_q if alpha == 1 else log_mixture(log_q, log_p, alpha)
    return reduce(kl(log_q, log_m), mask, reduction)
