"""A teacher's soft labels as stored in its output cache: every logit, or the top k and the rest of the mass.

`compress(logits, top_k)` turns teacher logits `[..., C]` into the tensors stored; `SoftLabels` reads them
back as logits `[B, C]` for the divergence:

- `top_k` None (or >= C): the logits `z` themselves, exact at every temperature;
- `top_k = k < C` (FKD's "top-k soft labels", Shen & Xing 2022): the log-probabilities `l = log_softmax(z)` of
  the k most probable classes S, and for every other class the same log-probability
  `rest = log(sum_{j not in S} exp(l_j)) - log(C - k)`: the remaining mass spread uniformly. The logits read
  back are `l_i` on S and `rest` elsewhere, so `softmax` of them is the kept probabilities plus the uniform
  tail (summing to 1); a temperature T divides these log-probabilities, `softmax(l~ / T)`, which at T = 1
  is that distribution and at T != 1 its tempered version (not the tempered teacher's: the tail's shape is gone).
"""

import torch


def compress(logits: torch.Tensor, top_k: int | None) -> dict[str, torch.Tensor]:
    """The tensors stored for teacher logits `[..., C]`: `{"logits": [..., C]}` float32 when `top_k` is None or
    >= C, else `{"log_probs": [..., k] float32, "classes": [..., k] int64, "rest": [...] float32}` (see the module docstring)."""
    classes = logits.shape[-1]
    if top_k is None or top_k >= classes:
        return {"logits": logits.float().contiguous()}
    log_probs = logits.double().log_softmax(dim=-1)
    kept, kept_classes = log_probs.topk(top_k, dim=-1)
    dropped = log_probs.scatter(-1, kept_classes, float("-inf"))
    rest = dropped.logsumexp(dim=-1) - torch.log(torch.tensor(classes - top_k, dtype=torch.float64))
    return {"log_probs": kept.float().contiguous(), "classes": kept_classes.contiguous(), "rest": rest.float().contiguous()}


class SoftLabels:
    """Stored soft labels of K views of N images (`compress` of logits `[K, N, C]`), read back as logits."""

    def __init__(self, tensors: dict[str, torch.Tensor], num_classes: int) -> None:
        self.tensors, self.num_classes = tensors, num_classes

    def logits(self, view: int, index: torch.Tensor) -> torch.Tensor:
        """The teacher logits `[B, C]` float32 of images `index` `[B]` under view `view`."""
        if "logits" in self.tensors:
            return self.tensors["logits"][view, index]
        rest = self.tensors["rest"][view, index]  # [B]
        full = rest[:, None].expand(-1, self.num_classes).clone()
        return full.scatter_(-1, self.tensors["classes"][view, index], self.tensors["log_probs"][view, index])

    def to(self, device: torch.device) -> "SoftLabels":
        return SoftLabels({name: tensor.to(device) for name, tensor in self.tensors.items()}, self.num_classes)
