"""The fused engine: any per-position divergence, its reduction and its backward in one pass over the logits.

A per-position divergence `v_n = D(z_s[n], z_t[n])` depends only on row n of the logits `[N, V]`, so
the gradient of `sum_n v_n` with respect to row n is the gradient of `v_n` alone. The engine therefore
computes, chunk by chunk of rows, the values AND `G = d(sum_n v_n)/dz` in the forward pass — one
kernel per chunk: `torch.func.grad_and_value` of the plain registered formula (the readable reference
of each divergence, unchanged: log-softmax, -inf vocabulary masking, temperature, parameters), compiled
by `torch.compile` (inductor: C++ on the CPU, Triton on the GPU), writing `G` in place into a buffer of
the logits' dtype. The backward pass only scales the rows, `grad_z = G * grad_v[:, None]`, which covers
every reduction and mask (they act on the values, outside the engine). No `[N, V]` float32
intermediate beyond one chunk is ever alive; the gradient buffers are the only full-size allocations.
Teacher logits that require grad (online regimes) get their gradient the same way.

The backward scales `G` in place, so it runs once per forward: a second backward (`retain_graph=True`)
raises RuntimeError, and there are no higher-order gradients (`KDLAB_FUSED=0` gives both).

Which path a call takes (`mode()`, the environment variable `KDLAB_FUSED`):
- "1" (default): compiled and fused when the logits have at least `min_numel()` entries
  (`KDLAB_FUSED_MIN_NUMEL`, default 2^20) and a float32/bfloat16/float16 dtype; otherwise the plain
  formula (small inputs, e.g. `[B, 10]` class logits, never pay a compilation; float64 keeps gradcheck);
- "0": always the plain formula;
- "eager": always fused, kernels not compiled (any size and dtype; what the tests check the mechanism with).
A compilation or backend failure falls back to the plain formula with one warning, never an error.
Compiled kernels are specialised on (divergence, parameters, temperature, which inputs need a
gradient) and, by recompilation, on dtype and shapes; the first call of each costs a compilation.
"""

import contextlib
import os
import types
import warnings
from collections.abc import Callable, Hashable, Iterator

import torch
from torch import Tensor

PerPosition = Callable[[Tensor, Tensor], Tensor]  # (student [n, V], teacher [n, V]) -> values [n]
Kernel = Callable[..., None]  # (student, teacher, values_out, *grad_outs) -> None, writes the outputs

MODES = ("0", "1", "eager")
CHUNK_NUMEL = 2**20  # logits entries per chunk at most: rows = the power of two <= CHUNK_NUMEL // V (32 at V = 32,000)
COMPILED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_kernels: dict[tuple[Hashable, ...], Kernel] = {}
_failed: set[Hashable] = set()  # kernels whose compilation failed: they take the plain path
_warned = False


def mode() -> str:
    """The engine's mode from `KDLAB_FUSED` ("1" when unset); ValueError naming the variable otherwise."""
    value = os.environ.get("KDLAB_FUSED", "1")
    if value not in MODES:
        raise ValueError(f"KDLAB_FUSED must be one of {', '.join(MODES)} (1 = fused and compiled above a size), got {value!r}")
    return value


def min_numel() -> int:
    """Smallest logits size (entries) the compiled path takes, from `KDLAB_FUSED_MIN_NUMEL` (default 2^20)."""
    value = os.environ.get("KDLAB_FUSED_MIN_NUMEL", str(2**20))
    if not value.isdigit():
        raise ValueError(f"KDLAB_FUSED_MIN_NUMEL must be a non-negative integer, got {value!r}")
    return int(value)


def per_position_values(
    fn: PerPosition, key: Hashable, student_logits: Tensor, teacher_logits: Tensor, chunk_size: int | None = None
) -> Tensor | None:
    """The values `fn` gives per position (leading shape of the logits `[..., V]`) through the fused
    engine, or None when this call takes the plain path (see the module docstring for which).

    `fn(s, t)` is the plain per-position formula on rows `[n, V]` (reduction "none", parameters and
    temperature bound); `key` identifies it (with those bindings) for the kernel cache. The arguments
    must already be checked. `chunk_size` (rows per chunk; default: see `CHUNK_NUMEL`) given: the
    fused engine takes every size in modes "1" and "eager", compiled only where "1" would compile.
    """
    current = mode()
    if current == "0" or torch.compiler.is_compiling():  # inside a user's torch.compile the outer compiler fuses
        return None
    dtypes = {student_logits.dtype, teacher_logits.dtype}
    compiled = current == "1" and student_logits.numel() >= min_numel() and dtypes <= set(COMPILED_DTYPES) and key not in _failed
    if not compiled and current != "eager" and chunk_size is None:
        return None
    vocab, positions = student_logits.shape[-1], student_logits.numel() // max(student_logits.shape[-1], 1)
    if positions == 0:
        return None
    rows = min(chunk_size or _power_of_two_at_most(CHUNK_NUMEL // max(vocab, 1)), _power_of_two_at_most(positions))
    try:
        values = _Fused.apply(fn, key, compiled, rows, student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab))
    except Exception as error:  # noqa: BLE001 - any compiler or backend failure: the plain path answers
        if not compiled:
            raise
        _failed.add(key)
        _warn_once(f"kdlab fused divergences: compilation failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                   "using the plain formulas (KDLAB_FUSED=0 chooses them without trying)")
        return None
    return values.view(student_logits.shape[:-1])


class _Fused(torch.autograd.Function):
    """Values `[N]` of a per-position divergence on `[N, V]` logits; the gradients are made in forward."""

    @staticmethod
    def forward(ctx, fn: PerPosition, key: Hashable, compiled: bool, rows: int, student: Tensor, teacher: Tensor) -> Tensor:
        needs = tuple(ctx.needs_input_grad[4:])
        kernel = _kernel(fn, key, needs, compiled)
        values = torch.empty(student.shape[0], dtype=torch.promote_types(student.dtype, torch.float32), device=student.device)
        grads = [torch.empty_like(x, memory_format=torch.contiguous_format) for x, need in zip((student, teacher), needs) if need]
        with _kernel_owns_its_graph():
            for start in _chunk_starts(student.shape[0], rows):
                chunk = slice(start, start + rows)
                kernel(student[chunk], teacher[chunk], values[chunk], *(grad[chunk] for grad in grads))
        ctx.needs, ctx.rows, ctx.scaled = needs, rows, False
        ctx.save_for_backward(*grads)
        return values

    @staticmethod
    def backward(ctx, grad_values: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.scaled:
            raise RuntimeError("a fused divergence's backward runs once (its gradient buffers are scaled in place); "
                               "set KDLAB_FUSED=0 for retain_graph=True or higher-order gradients")
        ctx.scaled = True
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) if need else None for need in ctx.needs]
        for grad in (g for g in grads if g is not None):
            for start in range(0, grad.shape[0], ctx.rows):  # by chunks: a bf16 x fp32 product needs an fp32 temporary
                grad[start : start + ctx.rows].mul_(grad_values[start : start + ctx.rows, None])
        return None, None, None, None, *grads


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _chunk_starts(positions: int, rows: int) -> list[int]:
    """Starts of the chunks of `rows` rows covering `positions` >= `rows` rows; the last chunk ends at the last
    row and overlaps the one before (its shared rows are written twice with the same values), so every
    kernel call has the same shape and a compiled kernel serves any number of positions."""
    starts = list(range(0, positions - rows + 1, rows))
    if starts[-1] + rows < positions:
        starts.append(positions - rows)
    return starts


def _kernel(fn: PerPosition, key: Hashable, needs: tuple[bool, bool], compiled: bool) -> Kernel:
    """The per-chunk function writing `fn`'s values and the gradients of their sum w.r.t. the inputs in `needs`."""
    cache_key = (key, needs, compiled)
    if cache_key not in _kernels:
        argnums = tuple(i for i, need in enumerate(needs) if need)

        def total(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
            values = fn(student, teacher)
            return values.sum(), values

        if argnums:
            grad_and_value = torch.func.grad_and_value(total, argnums=argnums, has_aux=True)

            def kernel(student: Tensor, teacher: Tensor, values_out: Tensor, *grads_out: Tensor) -> None:
                grads, (_, values) = grad_and_value(student, teacher)
                values_out.copy_(values)
                for grad_out, grad in zip(grads_out, grads):
                    grad_out.copy_(grad)  # inside the compiled function: written by the kernel itself, no extra pass
        else:

            def kernel(student: Tensor, teacher: Tensor, values_out: Tensor) -> None:
                values_out.copy_(fn(student, teacher))

        if compiled:
            # A code object of its own per kernel: the compiler caches (and limits recompilations) per code object.
            kernel = torch.compile(
                types.FunctionType(kernel.__code__.replace(), kernel.__globals__, kernel.__name__, None, kernel.__closure__), dynamic=False
            )
        _kernels[cache_key] = kernel
    return _kernels[cache_key]


@contextlib.contextmanager
def _kernel_owns_its_graph() -> Iterator[None]:
    """Lift the saved-tensor hooks (activation checkpointing's, e.g. in `kdlab.objectives.lm_chunks`) while
    the kernels run: the autograd graph inside a kernel is its own and ends with it (`torch.func` refuses
    hooks), while the gradient buffers saved for backward still pass through them."""
    lifted = []
    while (hooks := torch._C._autograd._top_saved_tensors_default_hooks(False)) is not None:
        lifted.append(hooks)
        torch._C._autograd._pop_saved_tensors_default_hooks()
    try:
        yield
    finally:
        for pack, unpack in reversed(lifted):
            torch._C._autograd._push_saved_tensors_default_hooks(pack, unpack)


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=5)
