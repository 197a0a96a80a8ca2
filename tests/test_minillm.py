"""MiniLLM: the returns against a float64 loop written here, the loss against the official code's formula
(microsoft/LMOps minillm/losses.py, with its own return and whitening) on fixed inputs, values and
gradients, and the policy gradient unbiased for the sequence-level reverse KL by exact enumeration."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.models.hf import lm_forward
from kdlab.objectives.minillm import MiniLLM, returns
from kdlab.tokens import token_logps


def loop_returns(rewards, mask, gamma, include_current, normalize):
    out = torch.zeros_like(rewards)
    for n in range(rewards.shape[0]):
        valid = [t for t in range(rewards.shape[1]) if mask[n, t]]
        for t in valid:
            later = [u for u in valid if (u >= t if include_current else u > t)]
            total = sum(gamma ** (u - t - (0 if include_current else 1)) * rewards[n, u] for u in later) if later else 0.0
            out[n, t] = total / max(len(later), 1) if normalize else total
    return out


@pytest.mark.parametrize("include_current", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_returns_match_a_plain_loop(include_current: bool, normalize: bool) -> None:
    torch.manual_seed(0)
    rewards = torch.randn(3, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    ours = returns(rewards, mask, 0.9, include_current, normalize)
    assert torch.allclose(ours, loop_returns(rewards, mask, 0.9, include_current, normalize), rtol=1e-12, atol=1e-12)


# ---- the official loss, written here from LMOps minillm/minillm/losses.py and utils.py ----
def official_loss(logits, teacher_logits, tokens, old_logprobs, mix_logprobs, gamma=0.95, cliprange=0.2):
    """`ppo_loss` for responses without padding: rewards = log p − log q_old, discounted inclusive return
    divided by the remaining length, whitened (torch.var_mean), PPO-clipped ratio·w, plus `_reg_loss`."""
    mask = torch.ones_like(old_logprobs)
    t_rewards = (teacher_logits - teacher_logits.mean(-1, keepdim=True)).gather(-1, tokens[..., None]).squeeze(-1) \
        - torch.logsumexp(teacher_logits - teacher_logits.mean(-1, keepdim=True), -1)
    rewards = t_rewards - old_logprobs
    lens = torch.cumsum(mask, dim=-1)
    lens = mask - lens + lens[:, -1:None]
    last, reversed_ = 0, []
    for t in reversed(range(rewards.size(1))):
        last = rewards[:, t] + gamma * last
        reversed_.append(last)
    advantages = torch.stack(reversed_[::-1], dim=1) / lens
    var, mean = torch.var_mean(advantages)
    advantages = ((advantages - mean) * torch.rsqrt(var + 1e-8)).detach()
    logprobs = F.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    w = torch.exp(old_logprobs - mix_logprobs)
    ratio = torch.exp(logprobs - old_logprobs) * w
    pg = torch.sum(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)) * mask) / mask.sum()
    xent = -(F.softmax(logits, -1) * F.log_softmax(teacher_logits, -1)).sum(-1)
    s_ent = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1)
    return pg + torch.sum((xent - s_ent) * mask) / mask.sum()


def test_the_loss_is_the_official_codes_with_its_return() -> None:
    torch.manual_seed(0)
    batch, length, vocab = 3, 5, 7
    tokens = torch.randint(vocab, (batch, length))
    ids = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tokens], dim=1)
    labels = ids.clone()
    labels[:, 0] = -100
    logits = torch.randn(batch, length + 1, vocab, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(batch, length + 1, vocab, dtype=torch.float64)
    old = logits.detach().log_softmax(-1)[:, :-1].gather(-1, tokens[..., None]).squeeze(-1)
    mixture = torch.log(0.8 * old.exp() + 0.2 * teacher.log_softmax(-1)[:, :-1].gather(-1, tokens[..., None]).squeeze(-1).exp())
    objective = MiniLLM(gamma=0.95, include_current=True, length_normalize=True, whiten=True, clip=0.2, reward_clip=100.0, single_step=True)
    ours, _ = objective({"logits": logits, "teacher_logits": teacher}, {"labels": labels, "sampling_logps": mixture})
    reference = logits.detach().clone().requires_grad_(True)
    theirs = official_loss(reference[:, :-1], teacher[:, :-1], tokens, old, mixture)
    assert torch.allclose(ours, theirs, rtol=1e-10)
    ours.backward()
    theirs.backward()
    assert torch.allclose(logits.grad, reference.grad, rtol=1e-8, atol=1e-12)


SEQUENCES = torch.tensor(list(itertools.product(range(3), repeat=2)))


def tiny_lm(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=3, n_positions=4, n_layer=1, n_embd=8, n_head=2)).double().eval()


def test_the_policy_gradient_is_unbiased_for_the_sequence_reverse_kl() -> None:
    """Paper form (future return, single-step term, γ = 1, no normalisation/whitening/clipping, on-policy):
    Σ_y q(y) ∇ [T · loss(y)] = ∇ KL(q ‖ p) over the 9 sequences, exactly."""
    student, teacher = tiny_lm(0), tiny_lm(1)
    ids = torch.cat([torch.zeros(9, 1, dtype=torch.long), SEQUENCES], dim=1)
    labels = ids.clone()
    labels[:, 0] = -100
    with torch.no_grad():
        teacher_logits = lm_forward(teacher, ids, torch.ones_like(ids))
        log_p = token_logps(teacher_logits, labels)[0].sum(-1)
    log_q = token_logps(lm_forward(student, ids, torch.ones_like(ids)), labels)[0].sum(-1)
    exact = torch.autograd.grad((log_q.exp() * (log_q - log_p)).sum(), list(student.parameters()))
    objective = MiniLLM(gamma=1.0, include_current=False, length_normalize=False, whiten=False, clip=1e9, reward_clip=1e9, single_step=True)
    weights = log_q.detach().exp()
    total = [torch.zeros_like(p) for p in student.parameters()]
    for row in range(9):
        one = slice(row, row + 1)
        loss, _ = objective({"logits": lm_forward(student, ids[one], torch.ones_like(ids[one])), "teacher_logits": teacher_logits[one]},
                            {"labels": labels[one]})
        for acc, grad in zip(total, torch.autograd.grad(2 * loss, list(student.parameters()))):  # T = 2 tokens: the token mean's factor
            acc += weights[row] * grad
    for ours, truth in zip(total, exact):
        assert torch.allclose(ours, truth, rtol=1e-8, atol=1e-12)


def test_bad_settings_are_refused() -> None:
    from kdlab.errors import ConfigError

    with pytest.raises(ConfigError, match="MiniLLM needs"):
        MiniLLM(gamma=1.5, include_current=False, length_normalize=True, whiten=True, clip=0.2, reward_clip=100.0, single_step=True)
