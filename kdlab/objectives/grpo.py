"""GRPO with a verifiable reward, and DPH-RL — "The Choice of Divergence: A Neglected Key to Mitigating
Diversity Collapse in Reinforcement Learning with Verifiable Reward" (Li et al., ICLR 2026, arXiv
2509.07430); docs/methods.md §8.9.

Checked against the official code (seamoke/DPH-RL, a verl fork: `verl/trainer/ppo/core_algos.py`
`compute_grpo_outcome_advantage`, `compute_policy_loss`, `kl_penalty`, `js_low_var`,
`alpha_divergence_f`; `verl/workers/actor/dp_actor.py` `update_policy`).

- GRPO (`+method=grpo`, no KL term): for the K responses of each prompt, the advantage of response i
  is `A_i = (r_i − mean_g r) / (std_g r + ε)` (std with Bessel's correction; a group of one has mean 0,
  std 1); per response token, with `ρ_t = π_θ(y_t)/π_old(y_t)` (log-ratio clamped to ±20),
  `ℓ_t = max(−A ρ_t, −A clip(ρ_t, 1 − ε_low, 1 + ε_high))`, and for A < 0 also `min(ℓ_t, −A c)` (dual clip,
  c = `clip_c`); the loss is the mean of ℓ_t over every response token of the batch (verl's "token-mean").
- DPH-RL (`+method=dphrl divergence=fkl|js|alpha`): GRPO on the exploration prompts D_exp plus the
  f-divergence rehearsal `coefficient · mean_t D_t` on stored correct samples of the initial policy π₀
  (D_pef), where `D_t = g(π_θ(y_t)/π₀(y_t))` with g the divergence's normalised generator
  (`kdlab.objectives.generators`: k3 `u − log u − 1` for fkl = KL(π₀‖π_θ), JS, α), an unbiased
  estimate of the per-token divergence `D(π_θ, π₀)` since y ~ π₀. The stored log π₀ replace an online
  reference. D_pef: the training prompts whose `presamples` responses from π₀ are all correct
  (`pef_threshold`, the fraction needed); for them, `rehearsal_draws` more responses are drawn and
  the correct ones stored with their token log-probs.
- `divergence=rkl`: the reverse-KL GRPO baseline, `coefficient · mean_t k3` with
  `k3 = π_ref/π_θ − log(π_ref/π_θ) − 1` on the rollouts (an online reference, no rehearsal).

kdlab's estimators use the generators in log space with |log u| ≤ 30; the official code clamps the
k3 log-ratio to ±20 and its value to ±10 (which zeroes the gradient beyond) and computes the JS and
α generators from u itself; kdlab's `js` is JS, half the official JS generator (`js_low_var`), so the
official coefficient c is kdlab's 2c.
"""

import random
from typing import Any

import torch
from torch import Tensor

from kdlab.divergences import Divergence
from kdlab.errors import ConfigError
from kdlab.objectives.base import NoDivergence, OpenSlot
from kdlab.objectives.generators import clamp_log_ratio, generator
from kdlab.objectives.on_policy import OnPolicyObjective, RolloutService, Rollouts, batch_prompts, concat_rows
from kdlab.tokens import IGNORE_INDEX, token_logps

DPHRL_SLOT = OpenSlot(("fkl", "js", "alpha", "rkl"))
REHEARSAL = 1  # `kind` of the rehearsal rows in a rollout batch


def group_advantages(rewards: Tensor, group: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO's outcome advantages `[N]`: `(r − mean) / (std + eps)` within each group (verl's
    `compute_grpo_outcome_advantage`: unbiased std; a group of one response gets mean 0 and std 1)."""
    advantages = torch.empty_like(rewards)
    for g in group.unique():
        rows = group == g
        values = rewards[rows]
        if len(values) == 1:
            advantages[rows] = values / (1.0 + eps)
        else:
            advantages[rows] = (values - values.mean()) / (values.std() + eps)
    return advantages


def clipped_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float, clip_c: float
) -> tuple[Tensor, Tensor]:
    """verl's dual-clip PPO objective, token-mean: `(loss, clipped fraction)`. Shapes `[N, T]`,
    advantages `[N]` (one per response, broadcast over its tokens), mask the response tokens."""
    ratio = (logps - old_logps).clamp(-20.0, 20.0).exp()
    advantages = advantages.unsqueeze(-1)
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    losses = torch.maximum(unclipped, clipped)
    losses = torch.where(advantages < 0, torch.minimum(losses, -advantages * clip_c), losses)
    return token_mean(losses, mask), token_mean((clipped > unclipped).float(), mask).detach()


def k3(log_ratio: Tensor) -> Tensor:
    """Schulman's k3 for KL(π_θ‖π_ref) on samples of π_θ, per token: `e^δ − δ − 1` with δ = log π_ref − log π_θ
    (`log_ratio`), δ clamped to ±20 and the value to ±10 as verl's `kl_penalty("low_var_kl")`."""
    delta = log_ratio.clamp(-20.0, 20.0)
    return (delta.exp() - delta - 1).clamp(-10.0, 10.0)


def token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the True entries of `mask` (0 when there are none)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


class GRPO(OnPolicyObjective):
    """GRPO without a KL term (see the module docstring); samples from the policy. Hyperparameters
    (conf/method/grpo.yaml, from DPH-RL's scripts): `clip_low` 0.2, `clip_high` 0.28, `clip_c` 3."""

    divergence_slot = NoDivergence()
    needs_reference = False

    def __init__(self, *, clip_low: float, clip_high: float, clip_c: float) -> None:
        super().__init__()
        if clip_low < 0 or clip_high < 0 or clip_c <= 1:
            raise ConfigError(f"objective needs clip_low, clip_high >= 0 and clip_c > 1, got {clip_low}, {clip_high}, {clip_c}")
        self.clip_low, self.clip_high, self.clip_c = clip_low, clip_high, clip_c

    def policy_gradient(self, logps: Tensor, mask: Tensor, batch: Rollouts) -> tuple[Tensor, dict[str, Tensor]]:
        """The clipped GRPO term on the sampled rows (`kind == 0`)."""
        sampled = batch["kind"] == 0
        if not sampled.any():
            return logps.sum() * 0.0, {}
        advantages = group_advantages(batch["rewards"][sampled], batch["group"][sampled])
        loss, clipped = clipped_policy_loss(logps[sampled], batch["sampling_logps"][sampled], advantages, mask[sampled],
                                            self.clip_low, self.clip_high, self.clip_c)
        return loss, {"pg_loss": loss.detach(), "clip_fraction": clipped}

    def forward(self, outputs: dict[str, Any], batch: Rollouts) -> tuple[Tensor, dict[str, Tensor]]:
        logps, mask = token_logps(outputs["logits"], batch["labels"])
        return self.policy_gradient(logps, mask, batch)


class DPHRL(GRPO):
    """DPH-RL: GRPO on D_exp + `coefficient ·` the f-divergence rehearsal on D_pef (fkl, js, alpha), or
    the reverse-KL GRPO baseline (rkl); see the module docstring. Defaults (conf/method/dphrl.yaml):
    the DPH-RL README and scripts (8 pre-samples, forward KL, coefficient within its 0.01–0.05)."""

    divergence_slot = DPHRL_SLOT

    def __init__(
        self,
        divergence: Divergence,
        *,
        clip_low: float,
        clip_high: float,
        clip_c: float,
        coefficient: float,
        presamples: int,
        pef_threshold: float,
        rehearsal_draws: int,
        rehearsal_batch: int,
    ) -> None:
        super().__init__(clip_low=clip_low, clip_high=clip_high, clip_c=clip_c)
        self.divergence = DPHRL_SLOT.bind("DPH-RL", divergence)
        if coefficient < 0 or presamples < 1 or rehearsal_draws < 1 or rehearsal_batch < 1 or not 0 < pef_threshold <= 1:
            raise ConfigError("DPH-RL needs objective.coefficient >= 0, presamples, rehearsal_draws, rehearsal_batch >= 1 and "
                              f"0 < pef_threshold <= 1; got {coefficient}, {presamples}, {rehearsal_draws}, {rehearsal_batch}, {pef_threshold}")
        self.coefficient, self.presamples, self.pef_threshold = coefficient, presamples, pef_threshold
        self.rehearsal_draws, self.rehearsal_batch = rehearsal_draws, rehearsal_batch
        self.online_kl = self.divergence.name == "rkl"
        self.estimator = generator(self.divergence.name, self.divergence.params)[0]
        self.perfect: set[int] = set()  # dataset indices of the D_pef prompts
        self.store: list[dict[str, Tensor]] = []  # the stored correct samples of π₀ (unpadded rows)

    @property
    def needs_reference(self) -> bool:  # the online reference of the rkl baseline
        return self.online_kl

    # ---- the pre-sampling stage -------------------------------------------------------------------
    def prepare_rollouts(self, service: RolloutService) -> None:
        """Split the training prompts into D_pef and D_exp by `presamples` responses of π₀ each; store
        correct responses of π₀ to the D_pef prompts with their token log-probs (the rehearsal set)."""
        if self.online_kl or self.store:
            return
        prompts = service.train_prompts()
        checks = service.rollouts("reference", prompts["prompt_ids"], prompts["prompt_mask"], self.presamples)
        solved = checks["rewards"].view(-1, self.presamples).mean(-1) >= self.pef_threshold - 1e-9
        self.perfect = set(prompts["index"][solved].tolist())
        if not solved.any():
            return
        stored = service.rollouts("reference", prompts["prompt_ids"][solved], prompts["prompt_mask"][solved], self.rehearsal_draws)
        for row in (stored["rewards"] == 1).nonzero().flatten().tolist():
            keep = stored["attention_mask"][row].bool()
            self.store.append({"input_ids": stored["input_ids"][row][keep], "labels": stored["labels"][row][keep],
                               "sampling_logps": stored["sampling_logps"][row][keep[1:]]})

    def prompts(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch's prompts outside D_pef (GRPO explores D_exp only; all of them while nothing is stored)."""
        if not self.store:
            return batch_prompts(batch)
        explore = torch.tensor([index not in self.perfect for index in batch["index"].tolist()], device=batch["prompt_ids"].device)
        return {"prompt_ids": batch["prompt_ids"][explore], "prompt_mask": batch["prompt_mask"][explore]}

    def extend(self, rollouts: Rollouts, batch: dict[str, Tensor]) -> Rollouts:
        """`rehearsal_batch` stored samples drawn uniformly (with replacement), as rows of kind 1."""
        if self.online_kl or not self.store:
            return rollouts
        rows = [random.choice(self.store) for _ in range(self.rehearsal_batch)]
        length = max(len(row["input_ids"]) for row in rows)
        device = rollouts["input_ids"].device

        def stack(key: str, width: int, fill: float) -> Tensor:
            out = torch.full((len(rows), width), fill, dtype=rows[0][key].dtype)
            for i, row in enumerate(rows):
                out[i, : len(row[key])] = row[key]
            return out.to(device)

        extra = {"input_ids": stack("input_ids", length, 0), "labels": stack("labels", length, IGNORE_INDEX),
                 "sampling_logps": stack("sampling_logps", length - 1, 0.0)}
        extra["attention_mask"] = (torch.arange(length, device=device) < torch.tensor([len(r["input_ids"]) for r in rows], device=device)[:, None]).long()
        extra["kind"] = torch.full((len(rows),), REHEARSAL, device=device)
        return concat_rows(rollouts, extra, pad_token_id=0)

    # ---- the loss -----------------------------------------------------------------------------------
    def forward(self, outputs: dict[str, Any], batch: Rollouts) -> tuple[Tensor, dict[str, Tensor]]:
        logps, mask = token_logps(outputs["logits"], batch["labels"])
        loss, logs = self.policy_gradient(logps, mask, batch)
        if self.online_kl:
            sampled = (batch["kind"] == 0).unsqueeze(-1) & mask
            kl = token_mean(k3(batch["ref_logps"] - logps), sampled)
            return loss + self.coefficient * kl, logs | {"kl_ref_loss": kl.detach()}
        rehearsal = (batch["kind"] == REHEARSAL).unsqueeze(-1) & mask
        if not rehearsal.any():
            return loss, logs
        divergence = token_mean(self.estimator(clamp_log_ratio(logps - batch["sampling_logps"])), rehearsal)
        return loss + self.coefficient * divergence, logs | {"rehearsal": divergence.detach(), "pef_prompts": torch.tensor(float(len(self.perfect))),
                                                              "stored_samples": torch.tensor(float(len(self.store)))}

    def get_extra_state(self) -> dict[str, Any]:
        return {"perfect": sorted(self.perfect), "store": self.store}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.perfect, self.store = set(state["perfect"]), list(state["store"])
