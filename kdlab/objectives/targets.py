"""Splitting class scores into the target class and the rest (DKD, NKD, USKD)."""

import torch


def target_column(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`scores[i, labels[i]]` for each row: `[B, C]` -> `[B]`."""
    return scores.gather(-1, labels[:, None]).squeeze(-1)


def non_target(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The scores of the non-target classes, in their original order: `[B, C]` -> `[B, C-1]`."""
    keep = torch.ones_like(scores, dtype=torch.bool).scatter_(-1, labels[:, None], False)
    return scores[keep].view(scores.shape[0], scores.shape[1] - 1)


def binary_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`[log p_y, log(1 - p_y)]` of `p = softmax(logits)`: `[B, C]` -> `[B, 2]`, in log space
    (`log(1 - p_y) = logsumexp` of the non-target log-probabilities), so neither entry is `log 0`
    when the target probability saturates."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return torch.stack([target_column(log_p, labels), torch.logsumexp(non_target(log_p, labels), dim=-1)], dim=-1)
