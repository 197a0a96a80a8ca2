"""f-DPG — "Aligning Language Models with Preferences through f-divergence Minimization" (Go, Korbak,
Kruszewski, Rozen, Ryu, Dymetman, ICML 2023, arXiv 2302.08215); docs/methods.md §8.7.

The policy π_θ is trained to minimise `D(π_θ, p)` — any divergence of kdlab's registry that is an
f-divergence with a sample estimator (`kdlab.objectives.generators`) — to a target distribution
`p(x) = P(x)/Z` known up to its normaliser, given by `objective.target` over the base a = π_ref:

- `rlhf`:           P(x) = a(x) exp(r(x)/β)              (the optimum of reward − β KL(π‖a));
- `pointwise`:      P(x) = a(x) b(x), b(x) = 1[r(x) ≥ threshold]   (GDC's pointwise constraint);
- `distributional`: P(x) = a(x) exp(λ r(x)), λ fitted before training so that E_p[r] = `moment`
                    (GDC's distributional constraint; λ by self-normalised importance sampling
                    on samples of a, as naver/disco's `constrain`).

The estimator (checked against the authors' library naver/disco, `tuners/losses/f_divergence.py`,
`tuners/tuner.py`): samples x ~ q, a proposal (`objective.proposal`: "offline" — a frozen snapshot
of the policy, replaced by it every `proposal_update_interval` steps when the importance-sampling
estimate of KL(p‖π) is below KL(p‖q); "online" — the policy itself), and

    Ẑ   = running mean of P(x)/q(x) over every sample of the context so far (this batch included),
    t(x) = π(x) / (P(x)/Ẑ),   R(x) = −g'(t(x))  (g' of the chosen divergence, in log t),
    A(x) = R(x) − b,          b = mean of R over the previous `baseline_window` samples,
    w(x) = π(x)/q(x) (detached),
    L    = mean_x[ −w(x) A(x) log π(x) ],

whose gradient is an unbiased estimate (up to the baseline) of `∇_θ D(π_θ, p) = E_π[g'(π/p) ∇ log π]`.
Ẑ, the baseline and the proposal's estimates are kept per context (the prompt) and saved with the
objective's state in checkpoints.
"""

import math
from collections import deque
from typing import Any

import torch
from torch import Tensor

from kdlab.divergences import Divergence
from kdlab.errors import ConfigError, DataError
from kdlab.objectives.base import OpenSlot
from kdlab.objectives.generators import NAMES, clamp_log_ratio, generator
from kdlab.objectives.on_policy import OnPolicyObjective, RolloutService, Rollouts, sequence_sums
from kdlab.tokens import token_logps

TARGETS = ("rlhf", "pointwise", "distributional")
PROPOSALS = ("offline", "online")
FDPG_SLOT = OpenSlot(NAMES)


def fdpg_loss(policy_logps: Tensor, proposal_logps: Tensor, target_logps: Tensor, derivative, baseline: float | None) -> tuple[Tensor, Tensor]:
    """The f-DPG surrogate on N samples of the proposal (see the module docstring).

    `policy_logps [N]` log π(x) (with gradient), `proposal_logps [N]` log q(x), `target_logps [N]`
    log p(x) = log P(x) − log Ẑ (−inf where P = 0), `derivative` = g' as a function of log t,
    `baseline` b (None: no baseline). Returns `(loss, pseudo_rewards [N])`.
    """
    detached = policy_logps.detach()
    pseudo_rewards = -derivative(clamp_log_ratio(detached - target_logps))
    advantages = pseudo_rewards - baseline if baseline is not None else pseudo_rewards
    weights = (detached - proposal_logps).exp()
    return (weights * -advantages * policy_logps).mean(), pseudo_rewards


def kl_estimates(target_logps: Tensor, model_logps: Tensor, proposal_logps: Tensor) -> Tensor:
    """Importance-sampling pointwise estimates of KL(p ‖ m) from samples of q: `(p/q) (log p − log m)`
    with p normalised (`target_logps` = log P − log Ẑ), 0 where p = 0 (disco's `KL.pointwise_estimates`)."""
    values = (target_logps - proposal_logps).exp() * (target_logps - model_logps)
    return torch.nan_to_num(values, nan=0.0)


def fit_lambda(rewards: Tensor, moment: float, iterations: int = 100, tolerance: float = 1e-10) -> float:
    """λ with `Σ_i e^{λ r_i} r_i / Σ_i e^{λ r_i} = moment` for samples r_i of the base (SNIS moment
    matching, the condition disco's `constrain` solves by gradient steps), by Newton's method on the
    convex `log mean e^{λ r} − λ moment`, in float64."""
    r = rewards.double()
    if not r.min() < moment < r.max():
        raise ConfigError(f"objective.moment={moment} is not reachable: the base's samples have rewards in "
                          f"[{r.min().item():.4g}, {r.max().item():.4g}]; pick a moment strictly inside")
    lam = 0.0
    for _ in range(iterations):
        weights = torch.softmax(lam * r, 0)
        mean = (weights * r).sum()
        variance = (weights * (r - mean).square()).sum()
        step = (mean - moment) / variance
        lam -= step.item()
        if abs(mean.item() - moment) < tolerance:
            break
    return lam


class ContextStatistics:
    """Per-context running state: log Ẑ (running mean of P/q, in log space) and its sample count."""

    def __init__(self) -> None:
        self.log_z: dict[tuple[int, ...], float] = {}
        self.count: dict[tuple[int, ...], int] = {}

    def update(self, key: tuple[int, ...], log_weights: Tensor) -> float:
        """Add the samples' `log(P/q)` to the context's running mean; return the new log Ẑ."""
        n_old, n_new = self.count.get(key, 0), len(log_weights)
        total = torch.logsumexp(log_weights.double(), 0).item()
        if n_old:
            total = float(torch.logaddexp(torch.tensor(self.log_z[key] + math.log(n_old), dtype=torch.float64),
                                          torch.tensor(total, dtype=torch.float64)))
        self.count[key] = n_old + n_new
        self.log_z[key] = total - math.log(n_old + n_new)
        return self.log_z[key]


class FDPG(OnPolicyObjective):
    """f-DPG with any divergence that has a sample estimator (default JS, disco's default loss); see the
    module docstring. Hyperparameters (conf/method/fdpg.yaml): the target (`target`, `beta`,
    `threshold`, `moment`, `calibration_samples` drawn from the base before training), the proposal
    (`proposal`, `proposal_update_interval`, `estimates_window`) and the baseline (`baseline_window`,
    0: none)."""

    divergence_slot = FDPG_SLOT

    def __init__(
        self,
        divergence: Divergence,
        *,
        target: str,
        beta: float | None,
        threshold: float | None,
        moment: float | None,
        calibration_samples: int,
        proposal: str,
        proposal_update_interval: int,
        estimates_window: int,
        baseline_window: int,
    ) -> None:
        super().__init__()
        self.divergence = FDPG_SLOT.bind("f-DPG", divergence)
        self.derivative = generator(self.divergence.name, self.divergence.params)[1]
        if target not in TARGETS:
            raise ConfigError(f"objective.target must be one of {TARGETS}, got {target!r}")
        needed = {"rlhf": "beta", "pointwise": "threshold", "distributional": "moment"}[target]
        given = {"beta": beta, "threshold": threshold, "moment": moment}
        if given[needed] is None or any(value is not None for key, value in given.items() if key != needed):
            raise ConfigError(f"objective.target={target} takes objective.{needed} (and not the others), got {given}")
        if target == "rlhf" and beta <= 0:
            raise ConfigError(f"objective.beta must be > 0, got {beta}")
        if target == "pointwise" and not self._bounded_where_p_vanishes():
            raise ConfigError(f"divergence={self.divergence.name} is infinite wherever the pointwise target p(x) = 0 and π(x) > 0: "
                              "use fkl, js, tvd, chi2, hellinger or alpha with alpha > 0")
        if proposal not in PROPOSALS:
            raise ConfigError(f"objective.proposal must be one of {PROPOSALS}, got {proposal!r}")
        if min(calibration_samples, proposal_update_interval, estimates_window) < 1 or baseline_window < 0:
            raise ConfigError("objective.calibration_samples, proposal_update_interval and estimates_window must be >= 1 "
                              "and objective.baseline_window >= 0")
        self.target, self.beta, self.threshold, self.moment = target, beta, threshold, moment
        self.calibration_samples = calibration_samples
        self.sampler = "proposal" if proposal == "offline" else "policy"
        self.proposal_update_interval, self.estimates_window, self.baseline_window = proposal_update_interval, estimates_window, baseline_window
        self.lam: float | None = None
        self.contexts = ContextStatistics()
        self.baseline: deque[float] = deque(maxlen=max(baseline_window, 1))
        self.estimates = {"policy": deque(maxlen=estimates_window), "proposal": deque(maxlen=estimates_window)}
        self.steps = 0

    def _bounded_where_p_vanishes(self) -> bool:
        """Whether g'(t) has a finite limit as t → ∞ (then the divergence is finite where p has zeros π lacks)."""
        far = self.derivative(torch.tensor([100.0, 200.0], dtype=torch.float64))
        return bool(torch.isfinite(far).all() and (far[1] - far[0]).abs() < 1e-6)

    # ---- the target ---------------------------------------------------------------------------------
    def target_log_scores(self, ref_logps: Tensor, rewards: Tensor) -> Tensor:
        """log P(x) `[N]` from log a(x) `[N]` and r(x) `[N]` (−inf where a pointwise constraint fails)."""
        if self.target == "rlhf":
            return ref_logps + rewards / self.beta
        if self.target == "pointwise":
            return ref_logps.masked_fill(rewards < self.threshold, -math.inf)
        if self.lam is None:
            raise RuntimeError("the distributional target's λ is fitted when training starts (prepare_rollouts)")
        return ref_logps + self.lam * rewards

    def prepare_rollouts(self, service: RolloutService) -> None:
        """Draw `calibration_samples` from the base: fit λ (distributional), and refuse a target with no
        mass on any of them (`DataError`, before training)."""
        if self.target == "rlhf" or self.lam is not None:  # nothing to fit, or λ restored from a checkpoint
            return
        prompts = service.train_prompts()
        count = min(len(prompts["prompt_ids"]), self.calibration_samples)
        per_prompt = math.ceil(self.calibration_samples / count)
        rollouts = service.rollouts("reference", prompts["prompt_ids"][:count], prompts["prompt_mask"][:count], per_prompt)
        rewards = rollouts["rewards"]
        if self.target == "distributional":
            self.lam = fit_lambda(rewards, self.moment)
        elif not (rewards >= self.threshold).any():
            raise DataError(f"the pointwise target a(x)·1[r(x) >= {self.threshold}] has no mass on {len(rewards)} samples of the base "
                            f"(their rewards are in [{rewards.min().item():.4g}, {rewards.max().item():.4g}]): lower objective.threshold")

    # ---- the loss -----------------------------------------------------------------------------------
    def forward(self, outputs: dict[str, Any], batch: Rollouts) -> tuple[Tensor, dict[str, Tensor]]:
        labels = batch["labels"]
        policy = token_logps(outputs["logits"], labels)[0].sum(-1)
        proposal = sequence_sums(batch["sampling_logps"], labels)
        target_scores = self.target_log_scores(sequence_sums(batch["ref_logps"], labels), batch["rewards"])
        log_z = torch.empty_like(target_scores)
        for key, rows in _contexts(batch):
            log_z[rows] = self.contexts.update(key, target_scores[rows] - proposal[rows])
        valid = torch.isfinite(log_z)  # a context whose samples all had P = 0 so far has Ẑ = 0: skipped, as disco does
        if not valid.any():
            return (policy * 0.0).sum(), {}
        target = target_scores[valid] - log_z[valid]
        policy, proposal = policy[valid], proposal[valid]
        baseline = sum(self.baseline) / len(self.baseline) if self.baseline_window and self.baseline else None
        loss, pseudo_rewards = fdpg_loss(policy, proposal, target, self.derivative, baseline)
        if self.baseline_window:
            self.baseline.extend(pseudo_rewards.tolist())
        self.estimates["policy"].extend(kl_estimates(target, policy.detach(), proposal).tolist())
        self.estimates["proposal"].extend(kl_estimates(target, proposal, proposal).tolist())
        return loss, {
            "pseudo_reward": pseudo_rewards.mean(),
            "importance_weight": (policy.detach() - proposal).exp().mean(),
            "log_z": log_z[valid].mean(),
            "kl_target_policy": torch.tensor(_mean(self.estimates["policy"])),
            "kl_target_proposal": torch.tensor(_mean(self.estimates["proposal"])),
        }

    def refresh_proposal(self) -> bool:
        """Every `proposal_update_interval` steps (offline proposal): True when the estimate of KL(p‖π)
        is below that of KL(p‖q) — disco's `_update_proposal_if_better` with its default metric, KL."""
        if self.sampler != "proposal":
            return False
        self.steps += 1
        if self.steps % self.proposal_update_interval or not self.estimates["policy"]:
            return False
        better = _mean(self.estimates["policy"]) < _mean(self.estimates["proposal"])
        if better:  # the new proposal's estimates start afresh
            self.estimates["proposal"].clear()
            self.estimates["proposal"].extend(self.estimates["policy"])
        return better

    # ---- checkpoints: Ẑ, the baseline and the estimates are part of the objective's state ------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"lam": self.lam, "log_z": dict(self.contexts.log_z), "count": dict(self.contexts.count), "baseline": list(self.baseline),
                "estimates": {key: list(values) for key, values in self.estimates.items()}, "steps": self.steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.lam, self.steps = state["lam"], state["steps"]
        self.contexts.log_z, self.contexts.count = dict(state["log_z"]), dict(state["count"])
        self.baseline.extend(state["baseline"])
        for key, values in state["estimates"].items():
            self.estimates[key].extend(values)


def _mean(values) -> float:
    return sum(values) / len(values) if values else math.nan


def _contexts(batch: Rollouts) -> list[tuple[tuple[int, ...], Tensor]]:
    """`(context key, row indices)` for each distinct prompt among the batch's rows (its unpadded token ids)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, (ids, mask) in enumerate(zip(batch["prompt_ids"].tolist(), batch["prompt_mask"].tolist())):
        groups.setdefault(tuple(i for i, m in zip(ids, mask) if m), []).append(row)
    return [(key, torch.tensor(rows, device=batch["prompt_ids"].device)) for key, rows in groups.items()]
