"""Vocabulary-scale token losses in bounded memory: per-token values computed chunk by chunk.

Two tools, both with exactly the values and gradients of the plain computation:

- `chunk_map(fn, chunk_size, *rows)`: `cat_k fn(chunk_k of every row tensor)`, each chunk under
  activation checkpointing, so only one chunk's intermediates (e.g. fp32 log-softmax `[chunk, V]`)
  are alive at once, in forward and in backward;
- `fused_token_terms(...)`: the per-token divergence and NLL computed from the final hidden states
  and the LM heads, logits made inside each chunk (`z = h W^T + b`), so neither model's `[N, V]`
  logits ever exist in full — the "fused linear" loss of Liger/torchtune, for any divergence.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from kdlab.tokens import at_least_fp32

Head = tuple[Tensor, Tensor | None]  # (weight [V, H], bias [V] or None) of an LM head, rows cut to the vocabulary


def chunk_map(fn: Callable[..., Tensor], chunk_size: int | None, *rows: Tensor) -> Tensor:
    """`fn(*rows)` evaluated on chunks of `chunk_size` rows (dim 0) and concatenated; None = one chunk.

    Under autograd each chunk is checkpointed: its forward intermediates are dropped and recomputed
    in backward. `fn` may read other tensors (e.g. LM-head weights) from its closure; their
    gradients accumulate over the chunks.
    """
    if chunk_size is None or rows[0].shape[0] <= chunk_size:
        return fn(*rows)
    pieces = zip(*(row.split(chunk_size) for row in rows))
    if not torch.is_grad_enabled():
        return torch.cat([fn(*piece) for piece in pieces])
    return torch.cat([checkpoint(fn, *piece, use_reentrant=False) for piece in pieces])


def token_nll(logits: Tensor, targets: Tensor, chunk_size: int | None = None) -> Tensor:
    """`-log softmax(z_n)[y_n]` per token, `[N, V], [N] -> [N]`, in at least fp32, chunk by chunk."""
    return chunk_map(lambda z, y: F.cross_entropy(at_least_fp32(z), y, reduction="none"), chunk_size, logits, targets)


def fused_token_terms(
    divergence: Callable[..., Tensor],
    student_hidden: Tensor,
    student_head: Head,
    teacher_hidden: Tensor,
    teacher_head: Head,
    targets: Tensor,
    chunk_size: int | None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-token `(D(p_T ‖ q_T), -log q(y))`, each `[N]`, from hidden states `[N, H_s]`, `[N, H_t]`.

    Inside each chunk: `z_s = h_s W_s^T + b_s`, `z_t = h_t W_t^T + b_t` (teacher without grad),
    `D = divergence(z_s, z_t, temperature, reduction="none")` (any per-position divergence of
    `kdlab.divergences`), `NLL = cross_entropy(z_s, y)` at T = 1. Gradients reach `h_s`, `W_s`, `b_s`.
    """
    (w_s, b_s), (w_t, b_t) = student_head, teacher_head

    def terms(h_s: Tensor, h_t: Tensor, y: Tensor) -> Tensor:
        z_s = F.linear(h_s, w_s, b_s)
        with torch.no_grad():
            z_t = F.linear(h_t, w_t, b_t)
        value = divergence(z_s, z_t, temperature=temperature, reduction="none")
        return torch.stack([value, F.cross_entropy(at_least_fp32(z_s), y, reduction="none")], dim=-1)

    values = chunk_map(terms, chunk_size, student_hidden, teacher_hidden.detach(), targets)
    return values[:, 0], values[:, 1]
