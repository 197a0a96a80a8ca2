"""Power divergences: Amari's alpha family and the alpha-beta family of ABKD, in log space."""

import torch
from torch import Tensor

from kdlab.divergences._core import check_param, expm1, kl, log_probs, reduce
from kdlab.divergences.registry import divergence


@divergence("alpha")
def alpha(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    alpha: float = 0.5,
) -> Tensor:
    """D_alpha(p||q) = (1 - sum_c p_c^alpha q_c^(1-alpha)) / (alpha (1 - alpha))

    Amari alpha-divergence, any real alpha; alpha = 1 is KL(p||q) (fkl) and alpha = 0 is KL(q||p)
    (rkl), taken exactly as these limits; alpha = 1/2 is 4 x squared Hellinger. Computed as
    -expm1(logsumexp(alpha log p + (1 - alpha) log q)) / (alpha (1 - alpha)), accurate near the limits.
    Shapes, `mask`, `temperature` and `reduction` as in `fkl`.
    """
    check_param("alpha", alpha)
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    if alpha == 1:
        value = kl(log_p, log_q)
    elif alpha == 0:
        value = kl(log_q, log_p)
    else:
        log_affinity = torch.logsumexp(alpha * log_p + (1 - alpha) * log_q, dim=-1)
        value = -torch.expm1(log_affinity) / (alpha * (1 - alpha))
    return reduce(value, mask, reduction)


@divergence("ab")
def ab(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    alpha: float = 0.2,
    beta: float = 0.7,
) -> Tensor:
    """D_AB(p||q) = -1/(alpha beta) sum_c [p^alpha q^beta - alpha/(alpha+beta) p^(alpha+beta) - beta/(alpha+beta) q^(alpha+beta)]

    Alpha-beta divergence of ABKD (Wang et al., ICML 2025; Cichocki et al. 2011), any real alpha,
    beta (defaults: ABKD's GPT-2 setting). The limits are separate branches (docs/methods.md §1.7):
    - beta = 0:           1/alpha^2 sum [p^alpha log(p^alpha / q^alpha) - p^alpha + q^alpha]  ((1, 0) = fkl)
    - alpha = 0:          1/beta^2  sum [q^beta log(q^beta / p^beta) - q^beta + p^beta]       ((0, 1) = rkl)
    - alpha + beta = 0:   1/alpha^2 sum [log(q^alpha / p^alpha) + p^alpha / q^alpha - 1]
    - alpha = beta = 0:   1/2 sum (log q - log p)^2
    The 1/alpha^2, 1/beta^2 factors make each branch the limit of the general formula; ABKD's code
    uses 1/alpha, 1/beta (same values at (1, 0) and (0, 1), a different scale elsewhere). Powers are
    exp(power * log-probability); with a negative power the value is infinite where a probability
    vanishes. Shapes, `mask`, `temperature` and `reduction` as in `fkl`.
    """
    check_param("alpha", alpha)
    check_param("beta", beta)
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    if alpha == 0 and beta == 0:
        value = 0.5 * (log_q - log_p).square().sum(dim=-1)
    elif beta == 0:
        value = _amari_power(log_p, log_q, alpha)
    elif alpha == 0:
        value = _amari_power(log_q, log_p, beta)
    elif alpha + beta == 0:
        log_ratio = log_p - log_q
        value = (expm1(alpha * log_ratio) - alpha * log_ratio).sum(dim=-1) / alpha**2
    else:
        s = alpha + beta
        cross = (alpha * log_p + beta * log_q).exp()
        value = -(cross - alpha / s * (s * log_p).exp() - beta / s * (s * log_q).exp()).sum(dim=-1) / (alpha * beta)
    return reduce(value, mask, reduction)


def _amari_power(log_a: Tensor, log_b: Tensor, power: float) -> Tensor:
    """1/power^2 sum_c [a^power log(a^power / b^power) - a^power + b^power]: KL(a||b) at power = 1."""
    a_power = (power * log_a).exp()
    return (a_power * power * (log_a - log_b) - a_power + (power * log_b).exp()).sum(dim=-1) / power**2
