"""Memory-bounded evaluation of a per-position divergence with an explicit chunk size: the fused engine."""

import functools
from collections.abc import Callable

from torch import Tensor

from kdlab.divergences.registry import Divergence

DivergenceFn = Callable[..., Tensor]


def chunked(fn: Divergence, chunk_size: int) -> DivergenceFn:
    """`fn` evaluated over chunks of `chunk_size` positions, with the same call signature and results.

    The fused engine (`kdlab.divergences.fused`) at every input size: each chunk's values and gradients
    are made in the forward pass, so the gradient buffers of the logits (their dtype) are the only
    full-size allocations. First-order gradients only. Batch-level divergences (`sinkhorn`) couple
    all positions and raise `ValueError`.
    """
    if fn.batch_level:
        raise ValueError(f"{fn.name} is batch-level (it couples all positions) and cannot be chunked")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    return functools.partial(fn.evaluate, chunk_size=chunk_size)
