"""What the on-policy objectives (f-DPG, GRPO and DPH-RL, D2O) share: the rollout batch they read,
the sampling service they may use before training, and their base class.

The on-policy regime (`kdlab.modules.on_policy.OnPolicyModule`) turns each batch of prompts into a
**rollout batch** (`Rollouts`, a dict of tensors; N rows):

- `input_ids, attention_mask, labels [N, L]`: prompt + response (labels `IGNORE_INDEX` off the response);
- `prompt_ids, prompt_mask [N, P]`: each row's prompt (left-padded); `group [N]`: which prompt of the
  step's batch the row answers (the K samples of a prompt are consecutive);
- `sampling_logps [N, L-1]`: log-probability of each response token under the distribution it was
  drawn from (the objective's `sampler`), aligned with `kdlab.tokens.token_logps`;
- `ref_logps [N, L-1]`: the same tokens under the frozen reference π_ref (when `needs_reference`);
- `rewards [N]`: the run's reward of each sampled response (`kdlab.rewards`);
- `kind [N]`: 0 for the rows sampled this step, > 0 for rows an objective appended (`extend`).

The objective then sees `outputs["logits"] [N, L, V]`, the policy's logits on the rollouts, and
the rollout batch itself, as every objective sees `(outputs, batch)`.
"""

from collections.abc import Callable
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from kdlab.objectives.base import Objective
from kdlab.tokens import IGNORE_INDEX, scored

Rollouts = dict[str, Tensor]
SAMPLERS = ("policy", "reference", "proposal")


class RolloutService(Protocol):
    """What the regime offers an objective before training (`OnPolicyObjective.prepare_rollouts`)."""

    def train_prompts(self) -> dict[str, Tensor]:
        """Every training prompt once: `prompt_ids, prompt_mask [M, P]`, `index [M]` (its dataset index)."""

    def rollouts(self, sampler: str, prompt_ids: Tensor, prompt_mask: Tensor, samples_per_prompt: int) -> Rollouts:
        """Scored rollouts (the layout above) of `samples_per_prompt` responses to each prompt from
        `sampler` ("policy", "reference" or "proposal"), without gradient."""


class OnPolicyObjective(Objective):
    """Base of the objectives the on-policy regime trains.

    `sampler` (an attribute): which model draws the rollouts — "policy" (on-policy), "reference"
    (the frozen initial policy) or "proposal" (a frozen snapshot the objective refreshes,
    `refresh_proposal`). `needs_reference`: the rollouts carry `ref_logps`. Hooks, all optional:
    `prepare_rollouts(service)` once when fitting starts (pre-sampling stages: λ of f-DPG's
    distributional target, DPH-RL's rehearsal set); `prompts(batch)` chooses the prompts a batch is
    answered for; `extend(rollouts, batch)` appends rows to the rollout batch (rehearsal samples, a
    dataset's negatives); `refresh_proposal()` after each optimiser step says whether the proposal
    takes the policy's weights now. `target_log_scores(ref_logps, rewards)` exists on objectives
    that match a target distribution (the exact metrics of a synthetic task read it).
    """

    sampler: str = "policy"
    needs_reference: ClassVar[bool] = True

    def prepare_rollouts(self, service: RolloutService) -> None:
        """Pre-training sampling, once when fitting starts (default: nothing)."""

    def prompts(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """`prompt_ids, prompt_mask [B, P]` of a dataset batch (default: its prompts, `batch_prompts`)."""
        return batch_prompts(batch)

    def extend(self, rollouts: Rollouts, batch: dict[str, Tensor]) -> Rollouts:
        """Rows to train on beside the sampled ones (default: none)."""
        return rollouts

    def refresh_proposal(self) -> bool:
        """After an optimiser step: True when the proposal should take the policy's weights now."""
        return False

    target_log_scores: Callable[[Tensor, Tensor], Tensor] | None = None


def batch_prompts(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The B prompts of a batch of B items: `prompt_ids, prompt_mask [B, P]` — a prompt batch's own, or the
    first B of a preference batch's 2B rows (its chosen and rejected rows share their prompts), read off
    its rows when the batch carries no prompts (`prompts_of`)."""
    count = len(batch["index"])
    if "prompt_ids" not in batch:
        return prompts_of(batch["input_ids"][:count], batch["attention_mask"][:count], batch["labels"][:count])
    return {"prompt_ids": batch["prompt_ids"][:count], "prompt_mask": batch["prompt_mask"][:count]}


def sequence_sums(token_values: Tensor, labels: Tensor) -> Tensor:
    """`Σ_t` of per-token values `[N, L-1]` over each row's response tokens (`labels[:, 1:]` scored) -> `[N]`."""
    return (token_values * scored(labels[:, 1:])).sum(-1)


SEQUENCE_KEYS = {"input_ids", "attention_mask", "labels"}  # [N, L]
TOKEN_KEYS = {"sampling_logps", "ref_logps"}  # [N, L-1], aligned with token_logps


def concat_rows(first: Rollouts, second: Rollouts, pad_token_id: int) -> Rollouts:
    """The rows of `first`, then those of `second`, right-padded to one length (ids with `pad_token_id`,
    labels with `IGNORE_INDEX`, masks and log-probs with 0). A key of `first` that `second` lacks
    (its prompts, rewards, group) is zero for the appended rows."""
    length = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}
    out = {}
    for key, value in first.items():
        other = second.get(key)
        if other is None:
            other = value.new_zeros((len(second["input_ids"]), *value.shape[1:]))
        other = other.to(value.device, value.dtype)
        if key in SEQUENCE_KEYS or key in TOKEN_KEYS:
            width = length if key in SEQUENCE_KEYS else length - 1
            value, other = _right_pad(value, width, fill.get(key, 0)), _right_pad(other, width, fill.get(key, 0))
        out[key] = torch.cat([value, other])
    return out


def _right_pad(tensor: Tensor, width: int, value: int | float) -> Tensor:
    if tensor.shape[1] >= width:
        return tensor
    return torch.cat([tensor, tensor.new_full((len(tensor), width - tensor.shape[1]), value)], dim=1)


def prompts_of(input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """The prompts of right-padded prompt + response rows (the tokens before the first scored label),
    left-padded as `generate` continues them: `prompt_ids, prompt_mask [N, P]` (padding id 0, masked)."""
    first = torch.where(scored(labels).any(-1), scored(labels).float().argmax(-1), attention_mask.sum(-1))
    width = int(first.max()) if len(first) else 0
    prompt_ids = input_ids.new_zeros((len(input_ids), width))
    prompt_mask = attention_mask.new_zeros((len(input_ids), width))
    for row, length in enumerate(first.tolist()):
        if length:
            prompt_ids[row, width - length:] = input_ids[row, :length]
            prompt_mask[row, width - length:] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}
