"""MiniPLM's difference sampling (Gu et al., ICLR 2025; docs/methods.md §7.7): score every instance of a
training corpus by how much more likely a large teacher LM finds it than a small reference LM, and
keep the highest-scoring fraction in the corpus' own order.

- `instance_nll(model, batches, vocab_size, n)`: the mean NLL over each instance's scored tokens
  (`labels != IGNORE_INDEX`; with the causal shift) — MiniPLM's per-instance LM loss;
- `difference_scores(teacher_nll, reference_nll) = reference_nll − teacher_nll`
  `= (1/|x|) [log p_T(x) − log p_ref(x)]`, a length-normalised log-likelihood ratio;
- `difference_sample(scores, keep_ratio)`: the indices of the `int(keep_ratio · N)` highest scores,
  sorted back into corpus order.

Checked against thu-coai/MiniPLM (read, not copied): `pretrain/inferer.py` (`PretrainLMInferer`:
`compute_lm_loss(..., mean=False)`, a per-instance mean of token losses over its loss mask),
`scripts/miniplm/difference_sampling/compute_difference_scores.py` (`diff_scores = small_scores -
large_scores`) and `construct_pretrain_data.py` (`torch.sort(scores, descending=True)`, the first
`int(ratio * len)` indices kept, then `torch.sort(kept_indices)`). The README's ratio
`log p(x) / log p_ref(x)` is not what the code computes (docs/methods.md §12.8). Ties, which MiniPLM's
unstable sort leaves to chance, keep the earlier instance here.
"""

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kdlab.errors import DataError
from kdlab.models.hf import lm_forward
from kdlab.tokens import token_logps


@torch.no_grad()
def instance_nll(model: nn.Module, batches: Iterable[dict[str, Tensor]], vocab_size: int, n: int) -> Tensor:
    """`[n]` float64: entry i is `-(1/|y_i|) Σ_t log p(y_{i,t} | y_{i,<t})` over the scored tokens of the
    instance with `index` i, for every batch (`input_ids, attention_mask, labels [B, L]`, `index [B]`),
    with `model` in eval mode on its own device. DataError names an instance without a scored token."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    values = torch.full((n,), float("nan"), dtype=torch.float64)
    for batch in batches:
        ids, mask, labels = (batch[key].to(device) for key in ("input_ids", "attention_mask", "labels"))
        logps, scored = token_logps(lm_forward(model, ids, mask)[..., :vocab_size], labels)
        counts = scored.sum(-1)
        if (counts == 0).any():
            raise DataError(f"training instance {int(batch['index'][counts.argmin()])} has no scored token: nothing to score it by")
        values[batch["index"]] = (-logps.sum(-1).double() / counts).cpu()
    model.train(was_training)
    if values.isnan().any():
        raise DataError(f"{int(values.isnan().sum())} of {n} training instances were never scored")
    return values


def difference_scores(teacher_nll: Tensor, reference_nll: Tensor) -> Tensor:
    """`r(x) = NLL_ref(x) − NLL_teacher(x)`, per instance: high where the teacher is much surer than the reference."""
    return reference_nll - teacher_nll


def difference_sample(scores: Tensor, keep_ratio: float) -> Tensor:
    """The indices of the `int(keep_ratio · N)` highest `scores [N]`, in ascending (corpus) order."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    kept = torch.sort(scores, descending=True, stable=True).indices[: int(keep_ratio * len(scores))]
    return torch.sort(kept).values
