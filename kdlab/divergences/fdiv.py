"""Generic f-divergences D_f(p||q) = sum_c q_c f(p_c / q_c), with f written as a function of t = log u."""

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from kdlab.divergences._core import expm1, log_probs, reduce
from kdlab.divergences.registry import divergence

# |log(p/q)| is clamped here (docs/methods.md §0.4 rule 5): exp(2 * 30) * 2^17 vocabulary entries stays below the
# float32 maximum, so chi^2-type divergences remain finite for extreme logits. Values change only where
# p/q or q/p exceeds e^30 ~ 1e13.
MAX_LOG_RATIO = 30.0

# f(u) as a function of t = log u (never of u, to avoid overflow); each is convex in u with f(1) = 0.
# In kdlab's convention D_f(p||q) has p = teacher, q = student. docs/methods.md §1.8 names them from the
# alignment side, D_f(pi||pi_ref): there "kl" (u log u) is KL(pi||pi_ref), the RLHF "reverse KL".
F_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "kl": lambda t: t.exp() * t,  # u log u                      -> KL(p||q)
    "reverse_kl": lambda t: -t,  # -log u                       -> KL(q||p)
    "js": lambda t: t.exp() * t - (t.exp() + 1) * (F.softplus(t) - math.log(2)),  # u log u - (u+1) log((u+1)/2) -> 2 JS(p,q)
    "tv": lambda t: 0.5 * expm1(t).abs(),  # |u - 1| / 2                  -> TV(p,q)
    "pearson": lambda t: expm1(t).square(),  # (u - 1)^2                    -> Pearson chi^2(p||q)
    "neyman": lambda t: expm1(t).square() * (-t).exp(),  # (1 - u)^2 / u                -> Neyman chi^2 = Pearson chi^2(q||p)
}


def f_divergence(log_q: Tensor, log_p: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
    """sum_c q_c f(p_c / q_c) over the last axis, with log(p/q) clamped to +-MAX_LOG_RATIO."""
    t = (log_p - log_q).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return (log_q.exp() * f(t)).sum(dim=-1)


@divergence("fdiv")
def fdiv(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    f: str = "js",
) -> Tensor:
    """D_f(p||q) = sum_c q_c f(p_c / q_c)

    f-divergence of the teacher p from the student q for a named f of docs/methods.md §1.8 (`F_FUNCTIONS`):
    "kl" = KL(p||q), "reverse_kl" = KL(q||p), "js" = 2 JS(p,q), "tv" = TV, "pearson" = chi^2(p||q),
    "neyman" = chi^2(q||p). The table's alpha-divergence with parameter a is `alpha` with alpha = 1 - a.
    f is evaluated on t = log(p/q), clamped to +-MAX_LOG_RATIO. Shapes, `mask`, `temperature` and
    `reduction` as in `fkl`.
    """
    if f not in F_FUNCTIONS:
        raise ValueError(f"f must be one of {sorted(F_FUNCTIONS)}, got {f!r}")
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    return reduce(f_divergence(log_q, log_p, F_FUNCTIONS[f]), mask, reduction)
