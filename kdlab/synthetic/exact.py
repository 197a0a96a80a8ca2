"""Exact sequence-level quantities of a causal LM on a synthetic task, by enumerating its responses.

A policy over fixed-length responses (no end token) defines a distribution over the `V^T` sequences
of its vocabulary, which `response_logps` scores exactly (teacher-forced, in chunks, float64 sums).
`known_reward_metrics` compares a policy with the base and, given a target `p ∝ P` (f-DPG's), with the
target: the true divergences `true_fkl` = KL(p‖π), `true_rkl` = KL(π‖p), `true_js`, `true_tvd`
(kdlab's registry divergences applied to the two distributions over the whole sequence space),
the exact reward, KL to the base, entropy and modes; `arithmetic_metrics` gives the exact Pass@k
`1 − (1 − π(answer|x))^k` per prompt, averaged.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from kdlab.divergences import get
from kdlab.models.hf import lm_forward
from kdlab.synthetic.arithmetic import ArithmeticTask
from kdlab.synthetic.task import KnownRewardTask
from kdlab.tokens import IGNORE_INDEX, token_logps

TRUE_DIVERGENCES = ("fkl", "rkl", "js", "tvd")


def all_sequences(vocab: int, length: int) -> Tensor:
    """Every sequence of `length` tokens over `vocab` tokens, `[vocab**length, length]` (lexicographic)."""
    codes = torch.arange(vocab**length)
    digits = [(codes // vocab**position) % vocab for position in reversed(range(length))]
    return torch.stack(digits, dim=1)


@torch.no_grad()
def response_logps(model: nn.Module, prompts: Tensor, responses: Tensor, chunk: int = 4096) -> Tensor:
    """`log π(y_i | x_i)` `[M]` (float64) for prompts `[M, P]` (unpadded) and responses `[M, T]`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(responses), chunk):
        x, y = prompts[start : start + chunk].to(device), responses[start : start + chunk].to(device)
        ids = torch.cat([x, y], dim=1)
        labels = torch.cat([torch.full_like(x, IGNORE_INDEX), y], dim=1)
        logps, _ = token_logps(lm_forward(model, ids, torch.ones_like(ids)), labels)
        out.append(logps.double().sum(-1).cpu())
    model.train(was_training)
    return torch.cat(out)


def known_reward_metrics(
    task: KnownRewardTask, policy: nn.Module, reference_logps: Tensor, target: Callable[[Tensor, Tensor], Tensor] | None
) -> dict[str, float]:
    """Exact metrics of `policy` on the known-reward task (prompt = its one token; responses = every
    sequence of `task.length` tokens of the policy's vocabulary): `exact_reward` E_π[r], `exact_kl_ref`
    KL(π‖π_ref), `exact_entropy` H(π) (nats), `exact_modes` (modes reached with ≥ 1% of π's mass), and
    with `target` (log P from log π_ref and r) `true_fkl|rkl|js|tvd` and the target's own `target_reward`,
    `target_entropy`. `reference_logps`: log π_ref of `all_sequences(task.token_count, task.length)`."""
    responses = all_sequences(task.token_count, task.length)
    prompts = torch.full((len(responses), 1), task.bos)
    log_pi = response_logps(policy, prompts, responses)
    rewards = task.reward(responses).double()
    pi = log_pi.exp()
    reached = (task.matches(responses) >= task.mode_threshold).double()  # [M, K]
    values = {
        "exact_reward": float((pi * rewards).sum()),
        "exact_kl_ref": float((pi * (log_pi - reference_logps)).sum()),
        "exact_entropy": float(-(pi * log_pi).sum()),
        "exact_modes": float(((pi.unsqueeze(-1) * reached).sum(0) >= 0.01).sum()),
    }
    if target is None:
        return values
    log_p = target(reference_logps, rewards)
    log_p = log_p - torch.logsumexp(log_p, 0)
    p = log_p.exp()
    finite = log_p.clamp(min=-1e4)  # p = 0 exactly where P = 0 (the registry would drop such entries from both sides)
    for name in TRUE_DIVERGENCES:  # the registry's divergences on the two distributions over the whole sequence space
        values[f"true_{name}"] = float(get(name)(log_pi.unsqueeze(0), finite.unsqueeze(0)))
    if (p == 0).any():  # KL(π‖p) is infinite where π has mass and p none
        values["true_rkl"] = float("inf")
    values["target_reward"] = float((p * rewards).sum())
    values["target_entropy"] = float(-(p * torch.where(p > 0, log_p, 0.0)).sum())
    return values


def arithmetic_metrics(task: ArithmeticTask, policy: nn.Module, ks: Sequence[int]) -> dict[str, float]:
    """Exact Pass@k over every prompt of the task: `mean_x 1 − (1 − π(answer(x) | x))^k` for each k,
    as `exact_pass@k`, and `exact_accuracy` = mean_x π(answer(x) | x)."""
    prompts = task.prompts()
    correct = response_logps(policy, prompts, task.answers(prompts)).exp()
    values = {"exact_accuracy": float(correct.mean())}
    for k in ks:
        values[f"exact_pass@{k}"] = float((1 - (1 - correct) ** k).mean())
    return values
