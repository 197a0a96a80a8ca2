"""f-DPG: the surrogate against naver/disco's formula (values and gradients), the estimator's gradient
against the exact gradient of the divergence on an enumerable sequence space, Ẑ, the baseline, λ, the
proposal refresh and the refusals."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.divergences import get
from kdlab.errors import ConfigError, DataError
from kdlab.models.generation import sample_responses
from kdlab.models.hf import lm_forward
from kdlab.objectives.fdpg import FDPG, fdpg_loss, fit_lambda
from kdlab.objectives.generators import generator
from kdlab.tokens import token_logps

# ---- naver/disco's losses, written here from `disco/tuners/losses/*.py` (f' of log t, then the surrogate) ----
DISCO_F_PRIME = {
    "kl": lambda s: -torch.exp(-s),
    "reverse_kl": lambda s: s + 1,
    "js": lambda s: math.log(2.0) - F.softplus(-s),
    "tv": lambda s: torch.sign(s) / 2,
    "chi_square": lambda s: 1.0 - torch.exp(-2 * s),
}
# kdlab's divergence -> (disco's loss, scale, shift): kdlab's pseudo-reward = scale · disco's + shift
EQUIVALENTS = {"fkl": ("kl", 1.0, -1.0), "rkl": ("reverse_kl", 1.0, 1.0), "js": ("js", 0.5, 0.0), "tvd": ("tv", 1.0, 0.0),
               "chi2": ("chi_square", 1.0, 0.0)}


def disco_loss(f_prime, proposal_log_probs, target_log_scores, policy_log_probs, z, baseline):
    target_log_probs = target_log_scores - torch.log(z)
    log_t = policy_log_probs.detach() - target_log_probs
    pseudo_reward = -f_prime(log_t)
    advantage = pseudo_reward - baseline if baseline is not None else pseudo_reward
    importance_ratios = (policy_log_probs.detach() - proposal_log_probs).exp()
    return (importance_ratios * (-advantage) * policy_log_probs).mean()


@pytest.mark.parametrize("name", list(EQUIVALENTS))
@pytest.mark.parametrize("baseline", [None, 0.3])
def test_the_surrogate_is_discos_on_fixed_inputs(name: str, baseline: float | None) -> None:
    disco, scale, shift = EQUIVALENTS[name]
    torch.manual_seed(0)
    policy = (torch.randn(16, dtype=torch.float64) - 4).requires_grad_(True)
    proposal, target_scores = policy.detach() + 0.3 * torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64) - 3
    z = torch.tensor(0.7, dtype=torch.float64)
    ours_policy = policy.detach().clone().requires_grad_(True)
    ours, _ = fdpg_loss(ours_policy, proposal, target_scores - z.log(), generator(name, {})[1],
                        None if baseline is None else scale * baseline + shift)
    theirs = disco_loss(DISCO_F_PRIME[disco], proposal, target_scores, policy, z, baseline)
    if baseline is None and shift:  # without a baseline a constant in the pseudo-reward adds shift · mean(w log π)
        theirs = theirs - shift * ((policy.detach() - proposal).exp() * policy).mean() / scale
    assert torch.allclose(ours, scale * theirs, rtol=1e-10, atol=1e-12)
    ours.backward()
    (scale * theirs).backward()
    assert torch.allclose(ours_policy.grad, policy.grad, rtol=1e-10, atol=1e-12)


# ---- an enumerable sequence space: 2 tokens over 3, after a one-token prompt ----
SEQUENCES = torch.tensor(list(itertools.product(range(3), repeat=2)))


def tiny_lm(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=3, n_positions=4, n_layer=1, n_embd=8, n_head=2)).double().eval()


def sequence_logps(model: GPT2LMHeadModel, responses: torch.Tensor) -> torch.Tensor:
    ids = torch.cat([torch.zeros(len(responses), 1, dtype=torch.long), responses], dim=1)
    labels = ids.clone()
    labels[:, 0] = -100
    return token_logps(lm_forward(model, ids, torch.ones_like(ids)).double(), labels)[0].sum(-1)


def exact_gradient(policy: GPT2LMHeadModel, name: str, params: dict, log_p: torch.Tensor) -> list[torch.Tensor]:
    policy.zero_grad()
    get(name, **params)(sequence_logps(policy, SEQUENCES).unsqueeze(0), log_p.unsqueeze(0), reduction="sum").backward()
    return [p.grad.clone() for p in policy.parameters()]


@pytest.mark.parametrize(("name", "params"), [("fkl", {}), ("rkl", {}), ("js", {}), ("tvd", {}), ("chi2", {}), ("alpha", {"alpha": 0.5})])
def test_the_estimator_is_unbiased_by_exact_enumeration(name: str, params: dict) -> None:
    """E_{x~q}[∇ w(x)(−A(x)) log π(x)] = ∇ D(π, p), the expectation taken exactly over the 9 sequences
    (each weighted by q(x)), for a proposal q ≠ π, with and without a constant baseline."""
    policy, proposal = tiny_lm(0), tiny_lm(1)
    log_p = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).log_softmax(0)  # the target
    exact = exact_gradient(policy, name, params, log_p)
    with torch.no_grad():
        log_q = sequence_logps(proposal, SEQUENCES)
    for baseline in (None, 0.37):
        policy.zero_grad()
        log_pi = sequence_logps(policy, SEQUENCES)
        detached = log_pi.detach()
        rewards = -generator(name, params)[1](detached - log_p)
        advantages = rewards - baseline if baseline is not None else rewards
        surrogate = (log_q.exp() * (detached - log_q).exp() * -advantages * log_pi).sum()  # Σ_x q(x) [w (−A) log π]
        surrogate.backward()
        for ours, truth in zip((p.grad for p in policy.parameters()), exact):
            assert torch.allclose(ours, truth, rtol=1e-8, atol=1e-11)


def test_the_sampled_estimate_converges_to_the_exact_gradient() -> None:
    """`fdpg_loss` on 40,000 samples of the proposal drawn by kdlab's sampler: the gradient is the exact
    one up to Monte-Carlo error (cosine > 0.99, relative error < 10%)."""
    policy, proposal = tiny_lm(0), tiny_lm(1)
    log_p = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).log_softmax(0)
    exact = torch.cat([g.flatten() for g in exact_gradient(policy, "js", {}, log_p)])
    torch.manual_seed(0)
    n = 40_000
    samples = sample_responses(proposal.float(), torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.long), 2)["responses"]
    proposal.double()
    codes = samples[:, 0] * 3 + samples[:, 1]
    with torch.no_grad():
        log_q = sequence_logps(proposal, SEQUENCES)[codes]
    policy.zero_grad()
    loss, _ = fdpg_loss(sequence_logps(policy, samples), log_q, log_p[codes], generator("js", {})[1], baseline=None)
    loss.backward()
    sampled = torch.cat([p.grad.flatten() for p in policy.parameters()])
    assert F.cosine_similarity(sampled, exact, dim=0) > 0.99
    assert (sampled - exact).norm() / exact.norm() < 0.1


# ---- the objective: Ẑ, the baseline, the target, λ, the proposal, refusals ----
def objective(name: str = "js", **overrides) -> FDPG:
    arguments = dict(target="rlhf", beta=0.5, threshold=None, moment=None, calibration_samples=64, proposal="offline",
                     proposal_update_interval=2, estimates_window=8, baseline_window=1024) | overrides
    return FDPG(get(name), **arguments)


def rollouts(log_pi_rows: int, seed: int) -> tuple[dict, torch.Tensor]:
    """A hand-made rollout batch of one-token responses after a one-token prompt, and policy logits with gradient."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, (log_pi_rows,), generator=g)
    ids = torch.stack([torch.zeros_like(tokens), tokens], dim=1)
    labels = ids.clone()
    labels[:, 0] = -100
    logits = torch.randn(log_pi_rows, 2, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "sampling_logps": torch.randn(log_pi_rows, 1, generator=g, dtype=torch.float64) - 1,
             "ref_logps": torch.randn(log_pi_rows, 1, generator=g, dtype=torch.float64) - 1,
             "rewards": torch.rand(log_pi_rows, generator=g, dtype=torch.float64),
             "prompt_ids": torch.zeros(log_pi_rows, 1, dtype=torch.long), "prompt_mask": torch.ones(log_pi_rows, 1, dtype=torch.long)}
    return batch, logits


def test_the_objective_keeps_discos_running_z_and_baseline() -> None:
    """Ẑ is the running mean of P/q over all samples so far (this batch included); the baseline is the mean
    pseudo-reward of the previous samples (none on the first batch)."""
    fdpg = objective("tvd")
    weights, rewards_seen = [], []
    for seed in range(3):
        batch, logits = rollouts(6, seed)
        loss, _ = fdpg({"logits": logits}, batch)
        log_pi = logits.log_softmax(-1)[torch.arange(6), 0, batch["input_ids"][:, 1]]
        log_target = batch["ref_logps"][:, 0] + batch["rewards"] / 0.5
        weights += (log_target - batch["sampling_logps"][:, 0]).exp().tolist()
        z = torch.tensor(sum(weights) / len(weights), dtype=torch.float64)
        baseline = sum(rewards_seen) / len(rewards_seen) if rewards_seen else None
        expected = disco_loss(DISCO_F_PRIME["tv"], batch["sampling_logps"][:, 0], log_target, log_pi, z, baseline)
        assert torch.allclose(loss, expected, rtol=1e-9)
        rewards_seen += (-DISCO_F_PRIME["tv"](log_pi.detach() - (log_target - z.log()))).tolist()
    assert math.isclose(math.exp(fdpg.contexts.log_z[(0,)]), sum(weights) / len(weights), rel_tol=1e-9)
    state = fdpg.get_extra_state()
    restored = objective("tvd")
    restored.set_extra_state(state)
    assert restored.contexts.log_z == fdpg.contexts.log_z and list(restored.baseline) == list(fdpg.baseline)


def test_the_targets() -> None:
    ref, rewards = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(objective(beta=0.5).target_log_scores(ref, rewards), ref + rewards / 0.5)
    pointwise = objective("fkl", target="pointwise", beta=None, threshold=0.5).target_log_scores(ref, rewards)
    assert pointwise[0] == -math.inf and torch.equal(pointwise[1:], ref[1:])
    distributional = objective(target="distributional", beta=None, moment=0.4)
    distributional.lam = 2.0
    assert torch.allclose(distributional.target_log_scores(ref, rewards), ref + 2.0 * rewards)


def test_lambda_matches_the_moment_as_discos_gradient_steps_do() -> None:
    rewards = torch.rand(512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam = fit_lambda(rewards, 0.7)
    weights = torch.softmax(lam * rewards, 0)
    assert abs((weights * rewards).sum().item() - 0.7) < 1e-9
    coefficient = torch.tensor(0.0, dtype=torch.float64)  # disco's `constrain`: λ -= lr (moment(λ) - target) with samples of the base
    for _ in range(20_000):
        ratios = torch.exp(coefficient * rewards)
        coefficient -= 0.05 * ((ratios * rewards).sum() / ratios.sum() - 0.7)
    assert abs(coefficient.item() - lam) < 1e-4
    with pytest.raises(ConfigError, match="not reachable"):
        fit_lambda(rewards, 1.5)


class FakeService:
    """Rollouts of the base with chosen rewards (what `prepare_rollouts` reads)."""

    def __init__(self, rewards: torch.Tensor) -> None:
        self.rewards = rewards

    def train_prompts(self) -> dict:
        return {"prompt_ids": torch.zeros(4, 1, dtype=torch.long), "prompt_mask": torch.ones(4, 1, dtype=torch.long), "index": torch.arange(4)}

    def rollouts(self, sampler: str, prompt_ids, prompt_mask, samples_per_prompt: int) -> dict:
        assert sampler == "reference"
        return {"rewards": self.rewards[: len(prompt_ids) * samples_per_prompt]}


def test_a_target_without_mass_fails_before_training_and_lambda_is_fitted() -> None:
    rewards = torch.rand(64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="no mass"):
        objective("fkl", target="pointwise", beta=None, threshold=2.0).prepare_rollouts(FakeService(rewards))
    distributional = objective(target="distributional", beta=None, moment=0.6)
    distributional.prepare_rollouts(FakeService(rewards))
    assert distributional.lam == pytest.approx(fit_lambda(rewards, 0.6))


def test_the_offline_proposal_is_refreshed_when_the_policy_is_closer_to_the_target() -> None:
    fdpg = objective(proposal_update_interval=2)
    fdpg.estimates["policy"].extend([0.1] * 4)
    fdpg.estimates["proposal"].extend([0.5] * 4)
    assert [fdpg.refresh_proposal(), fdpg.refresh_proposal()] == [False, True]  # every 2nd step, and better
    assert [fdpg.refresh_proposal(), fdpg.refresh_proposal()] == [False, False]  # the new proposal's estimates are the policy's
    assert objective(proposal="online").refresh_proposal() is False and objective(proposal="online").sampler == "policy"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"target": "pointwise", "beta": None, "threshold": 0.5}, "infinite wherever the pointwise target"),
    ({"beta": None}, "takes objective.beta"),
    ({"threshold": 0.3}, "and not the others"),
    ({"target": "rlhf", "beta": -1.0}, "beta must be > 0"),
    ({"proposal": "sometimes"}, "objective.proposal"),
    ({"target": "other"}, "objective.target"),
])
def test_bad_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        objective("rkl", **overrides)
