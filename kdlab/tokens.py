"""Token-level helpers of kdlab's language-model batches, shared by objectives, metrics, data, the
oracle and the synthetic task. A leaf: it imports only torch.

The layout (see `kdlab.data.text`): `labels [N, L]` hold the token ids that are scored and
`IGNORE_INDEX` (-100) everywhere else (prompt, padding). With the causal shift, the logits at
position t predict `labels[t + 1]`: `shift(logits, labels)` gives `(logits[:, :-1], labels[:, 1:])`.
"""

import torch
from torch import Tensor

IGNORE_INDEX = -100  # a label that is not scored (prompt, padding); torch's cross-entropy default


def at_least_fp32(tensor: Tensor) -> Tensor:
    """`tensor` in at least float32: bf16/fp16 are upcast, float32 and float64 kept."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def shift(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The causal shift: `logits [N, L, ...] -> [N, L-1, ...]` (positions 0..L-2) and
    `labels [N, L] -> [N, L-1]` (tokens 1..L-1), so that `logits[:, t]` predicts `labels[:, t]`."""
    return logits[:, :-1], labels[:, 1:]


def scored(labels: Tensor) -> Tensor:
    """The mask of scored tokens, `labels != IGNORE_INDEX` (bool, same shape)."""
    return labels != IGNORE_INDEX


def token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token log-probabilities of the labels, causally shifted.

    `logits [N, L, V]`, `labels [N, L]` -> `(logps [N, L-1], mask [N, L-1])` with
    `logps[n, t] = log softmax(logits[n, t])[labels[n, t+1]]` in at least fp32, exactly 0 where
    `mask` (the scored tokens) is False.
    """
    logits, labels = shift(logits, labels)
    mask = scored(labels)
    logps = at_least_fp32(logits).log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps.masked_fill(~mask, 0.0), mask


def mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """`-Σ m log p(y) / Σ m`: the token-mean negative log-likelihood of the scored tokens (a scalar)."""
    logps, mask = token_logps(logits, labels)
    return -logps.sum() / mask.sum().clamp(min=1)
