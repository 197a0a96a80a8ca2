"""Language-model metrics: token-level fit to the data, the teacher and an oracle; sequence-level KL
from samples; ROUGE-L of generations.

- `TokenPanel` (torchmetrics, synchronised across DDP processes), on the response tokens of held-out
  data: `nll` and `ppl = exp(nll)` of the student, `teacher_nll`, `teacher_ppl`, and the per-token
  divergences to the teacher `fkl` = KL(p_T‖q), `rkl` = KL(q‖p_T), `tvd`; with an oracle p*, also
  `oracle_fkl`, `oracle_rkl`, `oracle_tvd`. Every value is a mean over response tokens.
- `sequence_kl(...)`: `KL_seq(a ‖ b) = E_{y~a} Σ_t KL(a(·|x,y_<t) ‖ b(·|x,y_<t))` (the chain rule: the
  exact per-token KL summed along sequences sampled from a), mean over prompts — the proxy
  (student vs teacher) and golden (student vs oracle) metrics of the teacher-hacking protocol.
- `rouge_l(prediction, reference)`: ROUGE-L F1 (LCS over lower-cased alphanumeric tokens, the
  tokenisation of Google's `rouge-score` without stemming).
"""

import re

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from kdlab.divergences import get
from kdlab.models.hf import lm_forward
from kdlab.tokens import scored

DIVERGENCES = {"fkl": "fkl", "rkl": "rkl", "tvd": "tvd"}


class TokenPanel(nn.Module):
    """Epoch-level token metrics of one split; see the module docstring for the names."""

    def __init__(self, chunk_size: int | None = 1024) -> None:
        super().__init__()
        names = ["nll", "teacher_nll", *DIVERGENCES, *(f"oracle_{name}" for name in DIVERGENCES)]
        self.means = nn.ModuleDict({name: MeanMetric() for name in names})
        self.fns = {name: get(registry) for name, registry in DIVERGENCES.items()}
        self.chunk_size = chunk_size
        self.seen: set[str] = set()

    @torch.no_grad()
    def update(self, logits: Tensor, teacher_logits: Tensor, targets: Tensor, oracle_logits: Tensor | None = None) -> None:
        """Logits `[N, V]` at the N scored positions (already shifted and masked), targets `[N]`."""
        size = self.chunk_size or len(targets)
        for rows in torch.arange(len(targets), device=targets.device).split(size):
            student, teacher, y = logits[rows].float(), teacher_logits[rows].float(), targets[rows]
            values = {"nll": -student.log_softmax(-1).gather(-1, y[:, None]).squeeze(-1),
                      "teacher_nll": -teacher.log_softmax(-1).gather(-1, y[:, None]).squeeze(-1)}
            values |= {name: fn(student, teacher, reduction="none") for name, fn in self.fns.items()}
            if oracle_logits is not None:
                values |= {f"oracle_{name}": fn(student, oracle_logits[rows].float(), reduction="none") for name, fn in self.fns.items()}
            for name, value in values.items():
                self.means[name].update(value)
                self.seen.add(name)

    def compute(self) -> dict[str, Tensor]:
        values = {name: self.means[name].compute() for name in self.means if name in self.seen}
        if values:
            values["ppl"], values["teacher_ppl"] = values["nll"].exp(), values["teacher_nll"].exp()
        return values

    def reset(self) -> None:
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()
        self.seen.clear()


@torch.no_grad()
def token_kl_sums(sequences: dict[str, Tensor], a: nn.Module, b: nn.Module, vocab_size: int, batch_size: int = 8) -> Tensor:
    """`Σ_t KL(a_t ‖ b_t)` over the response tokens of each sequence `[N]`, teacher-forced on the
    sequences' tokens (`sequences` = `input_ids, attention_mask, labels [N, L]`, labels `IGNORE_INDEX` off the
    response), `batch_size` sequences at a time."""
    sums = []
    for rows in torch.arange(len(sequences["input_ids"])).split(batch_size):
        ids, mask = sequences["input_ids"][rows], sequences["attention_mask"][rows]
        response = scored(sequences["labels"][rows, 1:])
        log_a = lm_forward(a, ids, mask)[:, :-1, :vocab_size].float().log_softmax(-1)
        log_b = lm_forward(b, ids, mask)[:, :-1, :vocab_size].float().log_softmax(-1)
        sums.append(((log_a.exp() * (log_a - log_b)).sum(-1) * response).sum(-1))
    return torch.cat(sums)


def sequence_kl(samples_from_a: dict[str, Tensor], a: nn.Module, b: nn.Module, vocab_size: int) -> Tensor:
    """`KL_seq(a ‖ b)` estimated on sequences sampled from `a` (see the module docstring); a scalar."""
    return token_kl_sums(samples_from_a, a, b, vocab_size).mean()


def rouge_tokens(text: str) -> list[str]:
    """`rouge-score`'s default tokenisation: lower-case, non-alphanumerics as spaces, split."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(|a|·|b|) dynamic programme)."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 = 2PR / (P + R), P = LCS/|prediction|, R = LCS/|reference| (0 when either is empty)."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)
