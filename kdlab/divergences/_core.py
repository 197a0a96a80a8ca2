"""What every divergence shares: argument checks, fp32 log-probabilities, and masked reduction.

A per-position divergence reads as three steps (`torch.nn.functional` style):

    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    value = <formula in log_q, log_p, summed over the last axis>
    return reduce(value, mask, reduction)
"""

import math

import torch
from torch import Tensor

REDUCTIONS = ("none", "sum", "mean")

# Logit given to masked-vocabulary entries: exp(x) is exactly 0 even after scaling by a power as small as
# 1e-20, yet 2x, x - y and x * 1e-3 stay finite, so no 0 * (-inf) = NaN appears in values or gradients.
MASKED_LOGIT = -1e30


def check_inputs(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None, temperature: float, reduction: str) -> None:
    """Raise `ValueError` naming the offending argument; nothing is ever broadcast."""
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
            raise ValueError(f"{name} must be a floating-point tensor [..., V], got {_describe(logits)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape [..., V], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)} (vocabulary or positions differ)"
        )
    if mask is not None:
        leading = student_logits.shape[:-1]
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != leading:
            raise ValueError(f"mask must be a bool tensor of the leading shape {tuple(leading)}, got {_describe(mask)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def log_probs(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None, temperature: float, reduction: str
) -> tuple[Tensor, Tensor]:
    """Check the arguments; return `(log q, log p) = log_softmax(logits / T)` in at least float32.

    bf16/fp16 logits are upcast before the softmax (float64 stays float64, for gradcheck). A vocabulary
    entry whose logit is -inf on either side is masked vocabulary: it gets `MASKED_LOGIT` on both
    sides, so p_c = q_c = 0 there and both distributions are renormalised over the entries finite on
    both sides (exact when both models mask the same entries, e.g. a padded vocabulary).
    """
    check_inputs(student_logits, teacher_logits, mask, temperature, reduction)
    masked = student_logits.isneginf() | teacher_logits.isneginf()
    return tuple(_log_softmax(logits, masked, temperature) for logits in (student_logits, teacher_logits))


def _log_softmax(logits: Tensor, masked: Tensor, temperature: float) -> Tensor:
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1:
        scaled = scaled / temperature
    return scaled.masked_fill(masked, MASKED_LOGIT).log_softmax(dim=-1)


def reduce(values: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """Reduce per-position values (shape = leading shape) over the positions that count.

    "none": the values, 0 where `mask` is False; "sum": their sum; "mean": the sum over the counted
    positions / their number, and 0 (with a zero gradient) when none counts.
    """
    if mask is not None:
        values = torch.where(mask, values, 0.0)
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    if mask is None:
        return total / max(values.numel(), 1)
    return total / mask.sum().clamp_min(1)


def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) = sum_c a_c (log a_c - log b_c) over the last axis, from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def expm1(x: Tensor) -> Tensor:
    """e^x - 1, elementwise: `torch.expm1`, and `expm1_from_exp_log` inside `torch.compile` (the fused engine's
    kernels), where compilers vectorise exp and log with fast kernels and expm1 with a slow one (inductor on
    the CPU: a fused chi^2 step 1.5-2.5x faster). Both agree to a few ulp."""
    return expm1_from_exp_log(x) if torch.compiler.is_compiling() else torch.expm1(x)


def expm1_from_exp_log(x: Tensor) -> Tensor:
    """e^x - 1 to a few ulp, written with exp and log only: Kahan's identity (u - 1) x / log(u), u = e^x
    (x itself where u rounds to 1) for |x| < 1, where u - 1 alone cancels; u - 1 elsewhere. The unused
    branches are evaluated at safe points, so values and gradients stay finite wherever e^x is."""
    small = x.abs() < 1
    x_small = torch.where(small, x, 0.5)
    u = x_small.exp()
    rounds_to_one = u == 1
    kahan = torch.where(rounds_to_one, x_small, (u - 1) * x_small / torch.where(rounds_to_one, 1.0, u.log()))
    return torch.where(small, kahan, x.exp() - 1)


def check_param(name: str, value: float, low: float = -math.inf, high: float = math.inf) -> None:
    """Raise `ValueError` unless `value` is a finite real number in the closed interval [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a real number in [{low}, {high}], got {value!r}")


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return repr(x)
