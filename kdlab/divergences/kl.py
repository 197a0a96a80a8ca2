"""Kullback-Leibler divergences between teacher p = softmax(z_t / T) and student q = softmax(z_s / T)."""

from torch import Tensor

from kdlab.divergences._core import kl, log_probs, reduce
from kdlab.divergences.registry import divergence


@divergence("fkl", aliases=("kl",))
def fkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    drop_teacher_entropy: bool = False,
) -> Tensor:
    """KL(p||q) = sum_c p_c (log p_c - log q_c)

    Forward ("mass-covering") KL from the teacher p to the student q, per position of logits
    `[..., V]` (`[B, C]` per sample, `[B, L, V]` per token). `drop_teacher_entropy=True` returns the
    cross-entropy `-sum_c p_c log q_c` = KL + H(p) instead (same gradient in the student; the value
    logged by SinKD, DistiLLM and MiniPLM). `mask` (bool, leading shape) selects the positions that
    count; `reduction` is "none" (leading shape), "sum" or "mean" over the counted positions. Logits
    are divided by `temperature`; no T^2 factor. fp32 accumulation, float32 result.
    """
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    value = -(log_p.exp() * log_q).sum(dim=-1) if drop_teacher_entropy else kl(log_p, log_q)
    return reduce(value, mask, reduction)


@divergence("rkl")
def rkl(
    student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """KL(q||p) = sum_c q_c (log q_c - log p_c)

    Reverse ("mode-seeking") KL from the student q to the teacher p; the gradient flows through both
    q and log q. Shapes, `mask`, `temperature` and `reduction` as in `fkl`.
    """
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    return reduce(kl(log_q, log_p), mask, reduction)


@divergence("jeffreys")
def jeffreys(
    student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """J(p,q) = KL(p||q) + KL(q||p) = sum_c (p_c - q_c) (log p_c - log q_c)

    Jeffreys (symmetrised KL) divergence. Shapes, `mask`, `temperature` and `reduction` as in `fkl`.
    """
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    return reduce(((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1), mask, reduction)
