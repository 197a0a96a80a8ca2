"""GRPO and DPH-RL: advantages, the dual-clip loss and k3 against verl's formulas (values and gradients),
the rehearsal estimators unbiased by exact enumeration of a sequence space, the pre-sampling split,
and the Pass@k estimator unbiased by exact enumeration of the binomial."""

import itertools
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.divergences import get
from kdlab.errors import ConfigError
from kdlab.metrics.verifiable import mean_pass_at_k, pass_at_k, pass_ks
from kdlab.models.hf import lm_forward
from kdlab.objectives.generators import generator
from kdlab.objectives.grpo import DPHRL, GRPO, clipped_policy_loss, group_advantages, k3
from kdlab.tokens import token_logps


# ---- verl's formulas (seamoke/DPH-RL verl/trainer/ppo/core_algos.py), written here from the code ----
def verl_grpo_advantages(scores: torch.Tensor, index: list[int], epsilon: float = 1e-6) -> torch.Tensor:
    by_index: dict[int, list] = {}
    for i, idx in enumerate(index):
        by_index.setdefault(idx, []).append(scores[i])
    mean = {idx: torch.tensor(0.0, dtype=torch.float64) if len(v) == 1 else torch.mean(torch.stack(v)) for idx, v in by_index.items()}
    std = {idx: torch.tensor(1.0, dtype=torch.float64) if len(v) == 1 else torch.std(torch.stack(v)) for idx, v in by_index.items()}
    return torch.stack([(scores[i] - mean[idx]) / (std[idx] + epsilon) for i, idx in enumerate(index)])


def verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, cliprange_low, cliprange_high, clip_ratio_c):
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - cliprange_low, 1 + cliprange_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return (pg_losses * response_mask).sum() / response_mask.sum()  # verl_F.masked_mean, loss_agg_mode="token-mean"


def verl_low_var_kl(logprob, ref_logprob):
    kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)


def test_group_advantages_are_verls() -> None:
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    index = [0, 0, 0, 1, 1, 1, 2, 3]  # groups of 3, 3, and two singletons
    ours = group_advantages(scores, torch.tensor(index))
    assert torch.allclose(ours, verl_grpo_advantages(scores, index), rtol=1e-12)


def test_the_clipped_loss_is_verls_in_every_clipping_region() -> None:
    torch.manual_seed(0)
    old = torch.randn(6, 5, dtype=torch.float64) - 2
    log_prob = (old + 0.6 * torch.randn(6, 5, dtype=torch.float64)).requires_grad_(True)  # ratios inside and outside the clip
    advantages = torch.tensor([1.5, -2.0, 0.3, -0.1, 0.0, -5.0], dtype=torch.float64)
    mask = torch.rand(6, 5) > 0.2
    ours, _ = clipped_policy_loss(log_prob, old, advantages, mask, 0.2, 0.28, 3.0)
    reference = log_prob.detach().clone().requires_grad_(True)
    theirs = verl_policy_loss(old, reference, advantages.unsqueeze(-1), mask.double(), 0.2, 0.28, 3.0)
    assert torch.allclose(ours, theirs, rtol=1e-12)
    ours.backward()
    theirs.backward()
    assert torch.allclose(log_prob.grad, reference.grad, rtol=1e-12)


def test_k3_is_verls_low_var_kl_with_its_clamps() -> None:
    torch.manual_seed(0)
    logprob, ref = torch.randn(100, dtype=torch.float64) * 4 - 3, torch.randn(100, dtype=torch.float64) * 4 - 3
    assert torch.allclose(k3(ref - logprob), verl_low_var_kl(logprob, ref), rtol=1e-12)


# ---- the rehearsal estimators on an enumerable sequence space (2 tokens over 3, after a prompt token) ----
SEQUENCES = torch.tensor(list(itertools.product(range(3), repeat=2)))


def tiny_lm(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=3, n_positions=4, n_layer=1, n_embd=8, n_head=2)).double().eval()


def sequence_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.cat([torch.zeros(9, 1, dtype=torch.long), SEQUENCES], dim=1)
    labels = ids.clone()
    labels[:, 0] = -100
    return ids, labels


@pytest.mark.parametrize(("name", "params"), [("fkl", {}), ("js", {}), ("alpha", {"alpha": 0.2}), ("alpha", {"alpha": 0.7})])
def test_the_rehearsal_estimate_is_unbiased_by_exact_enumeration(name: str, params: dict) -> None:
    """E_{y~π₀}[Σ_t g(π_θ(y_t)/π₀(y_t))] = Σ_t E_{s_t~π₀} D(π_θ(·|s_t), π₀(·|s_t)) exactly (and, for fkl, the
    sequence-level KL(π₀‖π_θ)), values and gradients."""
    initial, policy = tiny_lm(0), tiny_lm(1)
    ids, labels = sequence_batch()
    with torch.no_grad():
        initial_logits = lm_forward(initial, ids, torch.ones_like(ids))
        log_pi0 = token_logps(initial_logits, labels)[0]
    policy_logits = lm_forward(policy, ids, torch.ones_like(ids))
    log_pi = token_logps(policy_logits, labels)[0]
    weights = log_pi0.sum(-1).exp()  # π₀(y)
    estimate = (weights * generator(name, params)[0](log_pi - log_pi0).sum(-1)).sum()
    divergence = get(name, **params)
    first = divergence(policy_logits[:1, 0], initial_logits[:1, 0], reduction="sum")  # the state after the prompt
    second = (log_pi0[::3, 0].exp() * divergence(policy_logits[::3, 1], initial_logits[::3, 1], reduction="none")).sum()  # after y_0
    exact = first + second
    if name == "fkl":
        sequence_kl = (weights * (log_pi0.sum(-1) - log_pi.sum(-1))).sum()
        assert torch.allclose(exact, sequence_kl, rtol=1e-10)
    assert torch.allclose(estimate, exact, rtol=1e-10)
    grads = torch.autograd.grad(estimate, list(policy.parameters()), retain_graph=True)
    truth = torch.autograd.grad(exact, list(policy.parameters()))
    for ours, reference in zip(grads, truth):
        assert torch.allclose(ours, reference, rtol=1e-8, atol=1e-12)


# ---- the objective on hand-made batches ----
def dphrl(name: str = "fkl", **overrides) -> DPHRL:
    arguments = dict(clip_low=0.2, clip_high=0.28, clip_c=3.0, coefficient=0.05, presamples=4, pef_threshold=1.0,
                     rehearsal_draws=1, rehearsal_batch=3) | overrides
    return DPHRL(get(name), **arguments)


def rollout_batch(seed: int) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.zeros(6, 1, dtype=torch.long), torch.randint(3, (6, 2), generator=g)], dim=1)
    labels = ids.clone()
    labels[:, 0] = -100
    logits = torch.randn(6, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "sampling_logps": torch.randn(6, 2, generator=g, dtype=torch.float64) - 1,
             "ref_logps": torch.randn(6, 2, generator=g, dtype=torch.float64) - 1,
             "rewards": torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64),
             "group": torch.tensor([0, 0, 1, 1, 2, 2]), "kind": torch.tensor([0, 0, 0, 0, 1, 1])}
    return batch, logits


@pytest.mark.parametrize("name", ["fkl", "rkl"])
def test_the_loss_is_grpo_plus_the_divergence_term(name: str) -> None:
    batch, logits = rollout_batch(0)
    loss, _ = dphrl(name)({"logits": logits}, batch)
    log_pi = logits.log_softmax(-1)[:, :2].gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    sampled = batch["kind"] == 0
    advantages = verl_grpo_advantages(batch["rewards"][sampled], batch["group"][sampled].tolist())
    expected = verl_policy_loss(batch["sampling_logps"][sampled], log_pi[sampled], advantages.unsqueeze(-1),
                                torch.ones(4, 2, dtype=torch.float64), 0.2, 0.28, 3.0)
    if name == "rkl":  # the reverse-KL GRPO baseline: k3 to the online reference on the rollouts
        expected = expected + 0.05 * verl_low_var_kl(log_pi[sampled], batch["ref_logps"][sampled]).mean()
    else:  # the rehearsal rows (kind 1): k3 of KL(π₀‖π_θ) from the stored log π₀
        expected = expected + 0.05 * verl_low_var_kl(batch["sampling_logps"][~sampled], log_pi[~sampled]).mean()
    assert torch.allclose(loss, expected, rtol=1e-10)
    assert torch.allclose(GRPO(clip_low=0.2, clip_high=0.28, clip_c=3.0)({"logits": logits}, batch | {"kind": torch.zeros(6)})[0],
                          verl_policy_loss(batch["sampling_logps"], log_pi, verl_grpo_advantages(batch["rewards"], batch["group"].tolist()).unsqueeze(-1),
                                           torch.ones(6, 2, dtype=torch.float64), 0.2, 0.28, 3.0), rtol=1e-10)


class FakeService:
    """Three prompts; the reference's pre-samples are correct for prompt 0 always, prompt 1 half the time, prompt 2 never."""

    def train_prompts(self) -> dict:
        ids = torch.tensor([[5], [6], [7]])
        return {"prompt_ids": ids, "prompt_mask": torch.ones_like(ids), "index": torch.tensor([10, 11, 12])}

    def rollouts(self, sampler: str, prompt_ids, prompt_mask, samples_per_prompt: int) -> dict:
        n = len(prompt_ids) * samples_per_prompt
        rewards = torch.tensor([{5: 1.0, 6: float(i % 2), 7: 0.0}[int(p)] for p in prompt_ids[:, 0] for i in range(samples_per_prompt)])
        ids = torch.cat([prompt_ids.repeat_interleave(samples_per_prompt, 0), torch.full((n, 2), 1)], dim=1)
        labels = ids.clone()
        labels[:, 0] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "rewards": rewards,
                "sampling_logps": torch.full((n, 2), -0.5)}


def test_pre_sampling_splits_the_prompts_and_stores_correct_samples() -> None:
    objective = dphrl(presamples=4, rehearsal_draws=2)
    objective.prepare_rollouts(FakeService())
    assert objective.perfect == {10} and len(objective.store) == 2
    batch = FakeService().train_prompts()
    assert objective.prompts(batch)["prompt_ids"].tolist() == [[6], [7]]  # GRPO explores D_exp only
    empty = {"input_ids": torch.zeros(0, 3, dtype=torch.long), "attention_mask": torch.zeros(0, 3, dtype=torch.long),
             "labels": torch.zeros(0, 3, dtype=torch.long), "sampling_logps": torch.zeros(0, 2), "rewards": torch.zeros(0),
             "group": torch.zeros(0, dtype=torch.long), "kind": torch.zeros(0, dtype=torch.long)}
    extended = objective.extend(empty, batch)
    assert extended["kind"].tolist() == [1, 1, 1] and (extended["sampling_logps"] == -0.5).all()
    state = objective.get_extra_state()
    restored = dphrl()
    restored.set_extra_state(state)
    assert restored.perfect == {10} and len(restored.store) == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="DPH-RL needs"):
        dphrl(presamples=0)
    with pytest.raises(ConfigError, match="takes the divergences"):
        dphrl("tvd")
    with pytest.raises(ConfigError, match="clip_c > 1"):
        GRPO(clip_low=0.2, clip_high=0.2, clip_c=1.0)


# ---- Pass@k ----
@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_pass_at_k_is_unbiased_by_exact_enumeration(p: float) -> None:
    """Σ_c Binom(c; n, p) pass@k(n, c) = 1 − (1 − p)^k for every k ≤ n, and the estimator is 1 − C(n−c, k)/C(n, k)."""
    n = 16
    for k in range(1, n + 1):
        expectation = sum(math.comb(n, c) * p**c * (1 - p) ** (n - c) * pass_at_k(n, c, k) for c in range(n + 1))
        assert math.isclose(expectation, 1 - (1 - p) ** k, rel_tol=1e-10, abs_tol=1e-12)
        for c in range(n + 1):
            assert math.isclose(pass_at_k(n, c, k), 1 - math.comb(n - c, k) / math.comb(n, k), rel_tol=1e-10, abs_tol=1e-12)
    assert pass_ks(16) == [1, 2, 4, 8, 16] and pass_ks(12) == [1, 2, 4, 8, 12]
    assert mean_pass_at_k([0, 16], 16)["pass@16"] == 0.5
