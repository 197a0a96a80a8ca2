"""MiniLLM — "MiniLLM: Knowledge Distillation of Large Language Models" (Gu, Dong, Wei, Huang, ICLR 2024,
arXiv 2306.08543); docs/methods.md §7.11. Checked against the official code (microsoft/LMOps `minillm/`:
`minillm/losses.py` `_get_advantages_and_returns`, `_pg_loss`, `_reg_loss`; `minillm/sampler.py`).

The student q_θ minimises the sequence-level reverse KL `KL(q_θ ‖ p) = −E_{y~q_θ} log p(y|x)/q_θ(y|x)`
by policy gradient on its own samples (drawn by the `TeacherMixedResponses` source of the LM
distillation regime). Per response token t of a sample, with the per-token reward
`r_t = log p(y_t|y_<t, x) − log q_θ(y_t|y_<t, x)` (detached):

- the **single-step** term: the exact per-position reverse KL `KL(q_θ(·|y_<t, x) ‖ p(·|y_<t, x))` over the
  vocabulary, with its gradient (kdlab's `rkl` divergence), mean over the response tokens;
- the **long-term** term: a PPO-clipped policy gradient with the future return
  `G_t = Σ_{t'>t} γ^{t'−t−1} r_{t'}` (the paper; `include_current=true` adds r_t, as the official code's
  return `Σ_{t'≥t}` does), **length-normalised** by the number of tokens it sums (the official code divides
  by the tokens from t on), clipped to ± `reward_clip`, whitened over the batch's response tokens, and
  weighted per token by the **teacher-mixed sampling** importance weight `w_t = q_θ(y_t)/p̃(y_t)`,
  `p̃ = α p + (1 − α) q_θ` the distribution the token was drawn from:
  `ℓ_t = max(−A_t ρ_t w_t, −A_t clip(ρ_t w_t, 1 − ε, 1 + ε))`, ρ_t = q_θ/q_old (1 at the single update
  kdlab makes per sample), mean over the response tokens.

Deviations from the official code (docs/methods.md §12): the return is the paper's (future tokens only,
γ = 1) unless `include_current=true`, `gamma=0.95` (the code's defaults); the code whitens over every
position of the padded batch, kdlab over the response tokens; one update per sample (the code reuses
each rollout for 4 PPO epochs); the language-modelling term on a pre-training corpus is not offered.
On a batch without sampling log-probs (the dataset's responses, in validation) w = 1.
"""

from typing import Any, ClassVar

import torch
from torch import Tensor

from kdlab.divergences import get
from kdlab.errors import ConfigError
from kdlab.objectives.base import FixedDivergence, Objective
from kdlab.tokens import scored, shift, token_logps

MINILLM_KL = FixedDivergence("rkl", "the sequence-level KL(q_θ‖p) the policy gradient minimises, and its single-step term")


def returns(rewards: Tensor, mask: Tensor, gamma: float, include_current: bool, length_normalize: bool) -> Tensor:
    """`G_t = Σ_{t' > t} γ^{t'−t−1} r_{t'}` (or `Σ_{t' ≥ t} γ^{t'−t} r_{t'}` with `include_current`) per
    row of `rewards, mask [N, T]` (mask: the response tokens), divided by the number of tokens summed
    (at least 1) when `length_normalize`; 0 off the mask."""
    rewards = rewards * mask
    running = torch.zeros_like(rewards[:, 0])
    inclusive = []
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        inclusive.append(running)
    total = torch.stack(inclusive[::-1], dim=1)  # Σ_{t' ≥ t} γ^{t'−t} r_t'
    counts = mask.flip(-1).cumsum(-1).flip(-1).float()  # tokens from t on
    if not include_current:
        total = torch.cat([total[:, 1:], torch.zeros_like(total[:, :1])], dim=1)
        counts = counts - mask.float()
    if length_normalize:
        total = total / counts.clamp(min=1)
    return total * mask


def whiten(values: Tensor, mask: Tensor) -> Tensor:
    """`(v − mean) / sqrt(var + 1e-8)` over the True entries of `mask` (var with Bessel's correction, as `torch.var_mean`)."""
    selected = values[mask]
    mean, var = selected.mean(), selected.var()
    return (values - mean) * torch.rsqrt(var + 1e-8)


class MiniLLM(Objective):
    """MiniLLM's loss on student samples (see the module docstring). Defaults (conf/method/minillm.yaml):
    the paper and the official scripts — clip ε = 0.2, reward clip 100, whitening, single-step term,
    length normalisation; teacher-mixed sampling α = 0.2 is the source's (`module.source.teacher_weight`)."""

    divergence_slot = MINILLM_KL
    fused: ClassVar[bool] = False  # the LM distillation regime reads it: full logits are needed
    needs_student_samples: ClassVar[bool] = True

    def __init__(
        self, *, gamma: float, include_current: bool, length_normalize: bool, whiten: bool, clip: float, reward_clip: float,
        single_step: bool,
    ) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0 or clip <= 0 or reward_clip <= 0:
            raise ConfigError(f"MiniLLM needs 0 <= objective.gamma <= 1, objective.clip > 0, objective.reward_clip > 0; got {gamma}, {clip}, {reward_clip}")
        self.gamma, self.include_current, self.length_normalize = gamma, include_current, length_normalize
        self.whiten, self.clip, self.reward_clip, self.single_step = whiten, clip, reward_clip, single_step
        self.reverse_kl = get(MINILLM_KL.name)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        logits, teacher_logits, labels = outputs["logits"], outputs["teacher_logits"], batch["labels"]
        logps, mask = token_logps(logits, labels)
        teacher_logps, _ = token_logps(teacher_logits, labels)
        detached = logps.detach()
        rewards = (teacher_logps - detached).clamp(-self.reward_clip, self.reward_clip)
        advantages = returns(rewards, mask, self.gamma, self.include_current, self.length_normalize)
        if self.whiten and mask.any():
            advantages = whiten(advantages, mask)
        sampling = batch.get("sampling_logps")
        weights = (detached - sampling).exp() if sampling is not None else torch.ones_like(detached)
        ratio = (logps - detached).exp() * weights
        unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - self.clip, 1 + self.clip)
        count = mask.sum().clamp(min=1)
        pg = (torch.maximum(unclipped, clipped) * mask).sum() / count
        shifted_logits, shifted_labels = shift(logits, labels)
        single = self.reverse_kl(shifted_logits, shift(teacher_logits, labels)[0], mask=scored(shifted_labels))
        loss = pg + single if self.single_step else pg
        sequence_kl = (-(rewards * mask).sum(-1)).mean()  # k1 estimate of KL(q‖p) on the samples
        return loss, {"pg_loss": pg.detach(), "single_step_kl": single.detach(), "sequence_kl": sequence_kl,
                      "importance_weight": (weights * mask).sum() / count}
