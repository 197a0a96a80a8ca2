"""LM metrics: ROUGE-L against an exact LCS, the sequence KL chain rule against enumeration, the token panel."""

import itertools
import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.metrics.lm import TokenPanel, lcs_length, rouge_l, token_kl_sums


def brute_lcs(a: list[str], b: list[str]) -> int:
    return max((k for k in range(len(a) + 1) for sub in itertools.combinations(a, k) if _subsequence(sub, b)), default=0)


def _subsequence(sub: tuple, b: list) -> bool:
    it = iter(b)
    return all(token in it for token in sub)


def test_rouge_l_is_the_lcs_f1() -> None:
    assert math.isclose(rouge_l("The cat sat on the mat.", "the cat is on the mat"), 5 / 6)  # LCS = the cat on the mat
    assert rouge_l("", "anything") == 0.0 and rouge_l("Same words!", "same, words") == 1.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        a, b = ([str(int(t)) for t in torch.randint(3, (int(n),), generator=generator)] for n in torch.randint(1, 7, (2,), generator=generator))
        assert lcs_length(a, b) == brute_lcs(a, b)


def test_sequence_kl_chain_rule_matches_enumeration() -> None:
    """Σ_y a(y) Σ_t KL(a_t ‖ b_t) over every response y equals Σ_y a(y) log a(y)/b(y)."""
    torch.manual_seed(0)
    a, b = (GPT2LMHeadModel(GPT2Config(vocab_size=3, n_positions=4, n_layer=1, n_embd=8, n_head=2, initializer_range=0.5)).eval() for _ in range(2))
    ids = torch.tensor([[0, *y] for y in itertools.product(range(3), repeat=2)])
    labels = ids.clone()
    labels[:, 0] = -100
    sequences = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        log_a, log_b = (m(input_ids=ids).logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1) for m in (a, b))
    weights = log_a.exp()
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-5)
    exact = float((weights * (log_a - log_b)).sum())
    assert math.isclose(float((weights * token_kl_sums(sequences, a, b, 3, batch_size=4)).sum()), exact, rel_tol=1e-4)
    assert float(token_kl_sums(sequences, a, a, 3).abs().max()) < 1e-6


def test_token_panel_means_over_tokens() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(10, 5, generator=generator), torch.randn(10, 5, generator=generator)
    targets = torch.randint(5, (10,), generator=generator)
    panel = TokenPanel(chunk_size=3)
    panel.update(logits[:4], teacher[:4], targets[:4])
    panel.update(logits[4:], teacher[4:], targets[4:])
    values = panel.compute()
    nll = torch.nn.functional.cross_entropy(logits, targets)
    torch.testing.assert_close(values["nll"], nll)
    torch.testing.assert_close(values["ppl"], nll.exp())
    p, q = teacher.softmax(-1), logits.softmax(-1)
    torch.testing.assert_close(values["fkl"], (p * (p / q).log()).sum(-1).mean())
    torch.testing.assert_close(values["tvd"], 0.5 * (p - q).abs().sum(-1).mean())
    assert "oracle_fkl" not in values
