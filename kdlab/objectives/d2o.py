"""D2O — "Negating Negatives: Alignment without Human Positive Samples via Distributional Dispreference
Optimization" (Duan, Yi, Zhang, Lu, Xie, Gu, arXiv 2403.03419); docs/methods.md §8.6.

Negative-only alignment: for a prompt x with a dispreferred (human-annotated negative) response y_l
and K responses y_1..y_K sampled from the reference π_r ("self-generated"),

    L = −log σ( (β/K) Σ_{i=1}^K log[π_θ(y_i|x) / π_r(y_i|x)] − α log[π_θ(y_l|x) / π_r(y_l|x)] ),

mean over prompts: the distribution of self-generated responses is preferred to the negative's (a
distributional, not instance-level, preference). The paper's two references π_r^+ and π_r^- are both
the frozen initial policy here. The official code was not found; the loss form follows the paper's
abstract and a third-party reimplementation (agentsea/dark.rl), the defaults are placeholders
(docs/methods.md §13). The K samples are drawn from π_r afresh at every step (the same distribution
as drawing them once before training, as the paper does). The negatives are the rejected responses
of a preference dataset (its chosen responses are not used).
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.objectives.base import FixedDivergence
from kdlab.objectives.on_policy import OnPolicyObjective, Rollouts, concat_rows, prompts_of, sequence_sums
from kdlab.tokens import token_logps

NEGATIVE = 1  # `kind` of the negative rows in a rollout batch
D2O_KL = FixedDivergence("rkl", "KL(π‖π_ref) of the RLHF objective D2O's preference model is derived from, as DPO's")


def d2o_loss(sample_log_ratios: Tensor, negative_log_ratios: Tensor, beta: float, alpha: float) -> tuple[Tensor, Tensor]:
    """Per prompt: `(losses [B], logits [B])` with `logits = (β/K) Σ_i ρ_i − α ρ_l`, from the
    self-generated responses' log-ratios `[B, K]` and the negatives' `[B]` (ρ = log π_θ − log π_r)."""
    logits = beta * sample_log_ratios.mean(-1) - alpha * negative_log_ratios
    return -F.logsigmoid(logits), logits


class D2O(OnPolicyObjective):
    """D2O (see the module docstring) on preference batches (their rejected rows are the negatives);
    K = `module.samples_per_prompt` responses of the reference per prompt. β, α: conf/method/d2o.yaml."""

    divergence_slot = D2O_KL
    sampler = "reference"

    def __init__(self, *, beta: float, alpha: float) -> None:
        super().__init__()
        if beta <= 0 or alpha <= 0:
            raise ConfigError(f"D2O needs objective.beta > 0 and objective.alpha > 0, got {beta}, {alpha}")
        self.beta, self.alpha = beta, alpha

    @staticmethod
    def negatives(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The rejected rows `[B, L]` of a preference batch (rows B..2B)."""
        half = len(batch["input_ids"]) // 2
        return {key: batch[key][half:] for key in ("input_ids", "attention_mask", "labels")}

    def prompts(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return prompts_of(**self.negatives(batch))

    def extend(self, rollouts: Rollouts, batch: dict[str, Tensor]) -> Rollouts:
        negatives = self.negatives(batch)
        count = len(negatives["input_ids"])
        negatives |= {"kind": torch.full((count,), NEGATIVE, device=negatives["input_ids"].device),
                      "group": torch.arange(count, device=negatives["input_ids"].device)}
        return concat_rows(rollouts, negatives, pad_token_id=0)

    def forward(self, outputs: dict[str, Any], batch: Rollouts) -> tuple[Tensor, dict[str, Tensor]]:
        labels = batch["labels"]
        ratio = token_logps(outputs["logits"], labels)[0].sum(-1) - sequence_sums(batch["ref_logps"], labels)
        sampled, negative = batch["kind"] == 0, batch["kind"] == NEGATIVE
        prompts = int(negative.sum())
        samples = ratio[sampled].view(prompts, -1)  # the K samples of each prompt are consecutive, prompts in batch order
        negatives = ratio[negative][batch["group"][negative].argsort()]
        losses, logits = d2o_loss(samples, negatives, self.beta, self.alpha)
        return losses.mean(), {
            "log_ratio/samples": samples.detach().mean(),
            "log_ratio/negative": negatives.detach().mean(),
            "accuracy": (logits.detach() > 0).float().mean(),
        }
