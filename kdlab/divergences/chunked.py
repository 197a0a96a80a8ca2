"""Memory-bounded evaluation of a per-position divergence: chunks of positions, recomputed in backward."""

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from kdlab.divergences._core import check_inputs, reduce
from kdlab.divergences.registry import Divergence

DivergenceFn = Callable[..., Tensor]


def chunked(fn: Divergence, chunk_size: int) -> DivergenceFn:
    """`fn` evaluated over chunks of `chunk_size` positions, with the same call signature and results.

    Logits `[..., V]` are viewed as `[N, V]`; the forward pass keeps only the per-position values
    (N floats), and the backward pass recomputes one chunk at a time, so the float32 intermediates of
    a single chunk (about chunk_size x V x a few floats) are alive at once, instead of N x V x a few.
    The gradient buffers of the logits (their dtype) are the only full-size allocations. Masked
    positions are evaluated but count for nothing. First-order gradients only. Batch-level
    divergences (`sinkhorn`) couple all positions and raise `ValueError`.
    """
    if fn.batch_level:
        raise ValueError(f"{fn.name} is batch-level (it couples all positions) and cannot be chunked")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")

    def chunked_fn(
        student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0, reduction: str = "mean"
    ) -> Tensor:
        check_inputs(student_logits, teacher_logits, mask, temperature, reduction)
        per_position = functools.partial(fn, temperature=temperature, reduction="none")
        vocab = student_logits.shape[-1]
        values = _Chunks.apply(per_position, chunk_size, student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab))
        return reduce(values.view(student_logits.shape[:-1]), mask, reduction)

    return chunked_fn


class _Chunks(torch.autograd.Function):
    """Per-position values of `fn` on `[N, V]` logits, chunk by chunk; backward recomputes each chunk."""

    @staticmethod
    def forward(ctx, fn: DivergenceFn, chunk_size: int, student: Tensor, teacher: Tensor) -> Tensor:
        ctx.fn, ctx.chunk_size = fn, chunk_size
        ctx.save_for_backward(student, teacher)
        return torch.cat([fn(s, t) for s, t in zip(student.split(chunk_size), teacher.split(chunk_size))])

    @staticmethod
    def backward(ctx, grad_values: Tensor) -> tuple[Tensor | None, ...]:
        inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        grads = [torch.zeros_like(x) if need else None for x, need in zip(inputs, needs)]
        for start in range(0, inputs[0].shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            with torch.enable_grad():
                leaves = [x[rows].detach().requires_grad_(need) for x, need in zip(inputs, needs)]
                values = ctx.fn(*leaves)
                chunk_grads = torch.autograd.grad(values, [x for x, need in zip(leaves, needs) if need], grad_values[rows])
            for grad, chunk_grad in zip([g for g in grads if g is not None], chunk_grads):
                grad[rows] = chunk_grad
        return None, None, *grads
