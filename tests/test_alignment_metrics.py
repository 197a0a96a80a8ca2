"""Alignment metrics: KL estimators from samples, distinct-n, the pair panel, sampling layout, the known-reward task."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.metrics.alignment import PreferencePanel, distinct_n, kl_estimates
from kdlab.models.generation import sample_responses
from kdlab.objectives.preference import Pairs
from kdlab.synthetic import KnownRewardTask
from kdlab.tokens import token_logps


def test_kl_estimators_converge_to_the_exact_sequence_kl() -> None:
    """Tokens independent across T positions: KL(π‖π_ref) = Σ_t KL_t exactly; k1 and k3 on 200k samples of π."""
    torch.manual_seed(0)
    policy, reference = torch.randn(3, 5).log_softmax(-1), torch.randn(3, 5).log_softmax(-1)
    exact = (policy.exp() * (policy - reference)).sum()
    samples = torch.distributions.Categorical(logits=policy).sample((200_000,))  # [N, T]
    positions = torch.arange(3)
    estimates = kl_estimates(policy[positions, samples], reference[positions, samples], torch.ones_like(samples, dtype=torch.bool))
    assert estimates["kl_ref"] == pytest.approx(exact.item(), rel=0.02)
    assert estimates["kl_ref_k3"] == pytest.approx(exact.item(), rel=0.02)
    few = kl_estimates(policy[positions, samples[:5]], reference[positions, samples[:5]], torch.ones(5, 3, dtype=torch.bool))
    assert few["kl_ref_k3"] >= 0


def test_distinct_n() -> None:
    responses = [[1, 2, 3], [1, 2, 4], []]
    assert distinct_n(responses, 1) == 4 / 6
    assert distinct_n(responses, 2) == 3 / 4
    assert distinct_n([[1]], 2) == 0.0


def pairs_of(probability: list[float], chosen: list[float], rejected: list[float]) -> Pairs:
    zeros = torch.zeros(len(probability))
    return Pairs(zeros, torch.tensor(chosen), torch.tensor(rejected), torch.tensor(probability), zeros, zeros)


def test_preference_panel_against_a_hand_computation() -> None:
    panel = PreferencePanel()
    panel.update(pairs_of([0.9, 0.3, 0.62], [1.0, 0.0, 0.5], [0.0, 0.5, 0.25]))
    values = panel.compute()
    assert values["accuracy"] == pytest.approx(2 / 3)
    assert values["margin"] == pytest.approx((1.0 - 0.5 + 0.25) / 3)
    assert values["reward_chosen"] == pytest.approx(0.5)
    # symmetrised binary ECE, 15 bins: points (p, 1) and (1 − p, 0); each p and 1 − p falls in its own bin here
    points = [(0.9, 1), (0.3, 1), (0.62, 1), (0.1, 0), (0.7, 0), (0.38, 0)]
    ece = sum(abs(label - p) for p, label in points) / len(points)
    assert values["ece"] == pytest.approx(ece, abs=1e-6)
    uninformed = PreferencePanel()
    uninformed.update(pairs_of([0.5] * 4, [0.0] * 4, [0.0] * 4))
    assert uninformed.compute()["ece"] == pytest.approx(0.0)


def test_sampled_responses_are_laid_out_for_token_logps() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=6, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    prompts = torch.tensor([[0, 0, 3, 4], [5, 1, 3, 4]])  # the first row is left-padded
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = sample_responses(model, prompts, mask, max_new_tokens=8, eos_token_id=2, pad_token_id=0)
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape
    assert (out["labels"][:, :4] == -100).all()
    for row in range(2):
        response = out["responses"][row]
        ends = (response == 2).nonzero()
        stop = ends[0, 0].item() + 1 if len(ends) else len(response)
        assert (out["labels"][row, 4 : 4 + stop] == response[:stop]).all()
        assert (out["labels"][row, 4 + stop :] == -100).all() and (out["attention_mask"][row, 4 + stop :] == 0).all()
    logps, scored = token_logps(model(input_ids=out["input_ids"], attention_mask=out["attention_mask"]).logits, out["labels"])
    assert torch.isfinite(logps).all() and scored.sum() == (out["labels"] != -100).sum()
    with pytest.raises(ValueError, match="pad_token_id"):
        sample_responses(model, prompts, mask, max_new_tokens=2, eos_token_id=2)


def test_known_reward_task() -> None:
    task = KnownRewardTask(vocab_size=5, length=6, n_modes=3, mode_weights=[0.5, 0.3, 0.2], keep=1.0)
    assert len(torch.unique(task.patterns, dim=0)) == 3
    torch.testing.assert_close(task.reward(task.patterns), torch.ones(3))
    noisy = task.patterns.clone()
    noisy[:, :3] = (noisy[:, :3] + 1) % 5
    assert torch.all(task.reward(noisy) >= 0.5)
    corpus = task.sample_corpus(200, torch.Generator().manual_seed(0))  # keep = 1: copies of the modes
    assert task.reward(corpus).eq(1).all() and task.modes_reached(corpus) == 3
    chosen, rejected = task.label(task.patterns, noisy, torch.Generator().manual_seed(0))
    assert {tuple(row) for row in torch.cat([chosen, rejected]).tolist()} == {tuple(row) for row in torch.cat([task.patterns, noisy]).tolist()}
    with pytest.raises(ValueError, match="mode_weights"):
        KnownRewardTask(n_modes=2, mode_weights=[1.0])
