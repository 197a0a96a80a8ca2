"""The synthetic tasks' exact metrics: enumeration of the sequence space, true divergences to a target,
exact Pass@k, and the arithmetic task's text and checker."""

import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.divergences import get
from kdlab.objectives.fdpg import FDPG
from kdlab.synthetic import ArithmeticTask, KnownRewardTask
from kdlab.synthetic.exact import all_sequences, arithmetic_metrics, known_reward_metrics, response_logps

TASK = KnownRewardTask(vocab_size=3, length=3, n_modes=2, mode_weights=(0.6, 0.4), mode_threshold=0.6)


def tiny_lm(vocab: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=8, n_layer=1, n_embd=8, n_head=2)).eval()


def test_all_sequences_and_their_probabilities() -> None:
    sequences = all_sequences(4, 3)
    assert sequences.shape == (64, 3) and len(torch.unique(sequences, dim=0)) == 64
    model = tiny_lm(TASK.token_count, 0)
    responses = all_sequences(TASK.token_count, TASK.length)
    log_pi = response_logps(model, torch.full((len(responses), 1), TASK.bos), responses, chunk=7)
    assert math.isclose(float(torch.logsumexp(log_pi, 0).exp()), 1.0, rel_tol=1e-6)  # a distribution over the whole space


def test_true_divergences_are_the_registrys_and_vanish_at_the_target() -> None:
    policy, reference = tiny_lm(TASK.token_count, 0), tiny_lm(TASK.token_count, 1)
    responses = all_sequences(TASK.token_count, TASK.length)
    prompts = torch.full((len(responses), 1), TASK.bos)
    ref_logps = response_logps(reference, prompts, responses)
    fdpg = FDPG(get("js"), target="rlhf", beta=0.5, threshold=None, moment=None, calibration_samples=1, proposal="online",
                proposal_update_interval=1, estimates_window=1, baseline_window=0)
    values = known_reward_metrics(TASK, policy, ref_logps, fdpg.target_log_scores)
    log_pi = response_logps(policy, prompts, responses)
    log_p = (ref_logps + TASK.reward(responses).double() / 0.5).log_softmax(0)
    assert math.isclose(values["true_fkl"], float((log_p.exp() * (log_p - log_pi)).sum()), rel_tol=1e-6)
    assert math.isclose(values["true_rkl"], float((log_pi.exp() * (log_pi - log_p)).sum()), rel_tol=1e-6)
    assert math.isclose(values["exact_kl_ref"], float((log_pi.exp() * (log_pi - ref_logps)).sum()), rel_tol=1e-6)
    at_target = known_reward_metrics(TASK, reference, ref_logps, lambda ref, rewards: ref)  # the target is the reference itself
    assert all(abs(at_target[f"true_{name}"]) < 1e-9 for name in ("fkl", "rkl", "js", "tvd")) and abs(at_target["exact_kl_ref"]) < 1e-9
    pointwise = known_reward_metrics(TASK, policy, ref_logps, lambda ref, rewards: ref.masked_fill(rewards < 1, -math.inf))
    assert pointwise["true_rkl"] == math.inf and math.isfinite(pointwise["true_fkl"]) and pointwise["target_reward"] == 1.0


def test_exact_pass_at_k_of_the_arithmetic_task() -> None:
    task = ArithmeticTask()
    policy = tiny_lm(task.token_count, 0)
    values = arithmetic_metrics(task, policy, (1, 8))
    prompts = task.prompts()
    correct = response_logps(policy, prompts, task.answers(prompts)).exp()
    assert math.isclose(values["exact_pass@1"], values["exact_accuracy"], rel_tol=1e-9)
    assert math.isclose(values["exact_pass@8"], float((1 - (1 - correct) ** 8).mean()), rel_tol=1e-9)


def test_the_arithmetic_text_errs_as_configured() -> None:
    task = ArithmeticTask(easy_accuracy=0.9, hard_accuracy=0.1, jitter=0.0, slip=1.0)
    prompts = task.prompts()
    assert task.answers(prompts[[0, 99]]).tolist() == [[0, 0], [1, 8]] and task.correct(prompts[[99]], torch.tensor([[1, 8]])).all()
    corpus = task.sft_corpus(20_000, torch.Generator().manual_seed(0))
    right = task.correct(corpus["input_ids"][:, :4], corpus["input_ids"][:, 4:])
    carry = corpus["input_ids"][:, 0] + corpus["input_ids"][:, 2] >= 10
    assert abs(right[~carry].float().mean() - 0.9) < 0.02 and abs(right[carry].float().mean() - 0.1) < 0.02
    forgot = corpus["input_ids"][carry & ~right][:, 4] == 0  # slip = 1: every wrong answer to a carry prompt forgets the carry
    assert forgot.all() and (corpus["labels"][:, :4] == -100).all()
