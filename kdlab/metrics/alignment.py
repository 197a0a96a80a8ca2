"""Alignment metrics: how a policy ranks preference pairs, and what its samples look like.

- `PreferencePanel` (torchmetrics, synchronised across DDP processes) on held-out pairs:
  `accuracy` (fraction of pairs whose implied P(y_w ≻ y_l) > 1/2), `margin` (mean implicit-reward
  margin r_w − r_l), `reward_chosen`, `reward_rejected` (mean implicit rewards), `ece` (expected
  calibration error of the implied preference probabilities against the observed labels, 15
  equal-width bins, as the f-DPO paper reports; every pair counts in both orders, `(p, 1)` and
  `(1 − p, 0)`, so that the arbitrary chosen-first layout does not make an uninformed p = 1/2 look miscalibrated).
- `sample_metrics` on responses sampled from the policy: sequence KL to the reference (k1 and k3
  estimators, docs/methods.md §1.13), entropy, distinct-n.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryCalibrationError

from kdlab.objectives.preference import Pairs

ECE_BINS = 15


class PreferencePanel(nn.Module):
    """Epoch-level pair metrics of one split; keys of `compute()`: accuracy, margin, reward_chosen, reward_rejected, ece."""

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.ModuleDict({name: MeanMetric() for name in ("accuracy", "margin", "reward_chosen", "reward_rejected")})
        self.ece = BinaryCalibrationError(n_bins=ECE_BINS, norm="l1")

    def update(self, pairs: Pairs) -> None:
        self.means["accuracy"].update((pairs.probability > 0.5).float())
        self.means["margin"].update(pairs.chosen_rewards - pairs.rejected_rewards)
        self.means["reward_chosen"].update(pairs.chosen_rewards)
        self.means["reward_rejected"].update(pairs.rejected_rewards)
        # each pair in both orders, (p, y_w ≻ y_l) and (1 − p, y_l ≻ y_w): a pair's order carries no information
        probability = pairs.probability.float()
        self.ece.update(torch.cat([probability, 1 - probability]),
                        torch.cat([torch.ones_like(probability), torch.zeros_like(probability)]).long())

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: metric.compute() for name, metric in self.means.items()} | {"ece": self.ece.compute()}

    def reset(self) -> None:
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()


def kl_estimates(policy_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sequence-level KL(π ‖ π_ref) from responses sampled from π, mean over the N samples.

    Inputs `[N, T]` per-token log-probs of the sampled tokens under the policy and the reference,
    `mask [N, T]` (response tokens). With `δ_t = log π(y_t|·) − log π_ref(y_t|·)`:
    - `k1 = Σ_t δ_t` (unbiased, can be negative on few samples);
    - `k3 = Σ_t (e^{−δ_t} − 1 + δ_t)` (Schulman's low-variance estimator, ≥ 0; unbiased per token
      given the prefix, hence for the sequence KL by the chain rule).
    """
    delta = (policy_logps.double() - ref_logps.double()) * mask
    k3 = (torch.expm1(-delta) + delta) * mask
    return {"kl_ref": delta.sum(-1).mean().float(), "kl_ref_k3": k3.sum(-1).mean().float()}


def distinct_n(responses: Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams over the responses (0 when there are none)."""
    grams = [tuple(response[i : i + n]) for response in responses for i in range(len(response) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sample_metrics(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, responses: Sequence[Sequence[int]]
) -> dict[str, torch.Tensor]:
    """Diversity and drift of N responses sampled from the policy (shapes as in `kl_estimates`).

    `kl_ref`, `kl_ref_k3` (see `kl_estimates`); `entropy`: the Monte-Carlo estimate of the sequence
    entropy `H(π(·|x)) = E_y[−log π(y|x)]` in nats; `distinct_1`, `distinct_2` of the response tokens;
    `unique`: the fraction of distinct responses; `length`: mean response length in tokens.
    """
    return kl_estimates(policy_logps, ref_logps, mask) | {
        "entropy": -(policy_logps * mask).sum(-1).mean(),
        "distinct_1": torch.tensor(distinct_n(responses, 1)),
        "distinct_2": torch.tensor(distinct_n(responses, 2)),
        "unique": torch.tensor(len({tuple(response) for response in responses}) / max(len(responses), 1)),
        "length": mask.sum(-1).float().mean(),
    }
