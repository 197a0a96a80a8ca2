"""Rewards: a number for each sampled response, for any preference or policy run (`reward=NAME`).

A reward is a callable `reward(responses) -> [N]` on `Responses` (the prompts and the sampled
responses as token ids, and the datamodule's `decode` for the rewards that read text). Rewards
that are verifiable (`verifiable = True`: exactly 0 or 1, a checker) make the on-policy regime log
Pass@k. `score(reward, responses)` calls one and refuses what training cannot use (a wrong shape,
a NaN or an infinite score), naming the reward and the response.

- `VaderSentiment`: VADER's compound sentiment score of the decoded response text, in [-1, 1]
  (Hutto & Gilbert 2014; the `vaderSentiment` package, offline) — the shipped example of a text reward;
- `KnownReward`: the known-reward task's true reward `r(y) = max_k match(y, P_k)` (`kdlab.synthetic`);
- `ArithmeticChecker`: 1 when the response is the right sum of the arithmetic task's prompt, else 0.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from kdlab.errors import ConfigError, DataError
from kdlab.synthetic.arithmetic import ArithmeticTask
from kdlab.synthetic.task import KnownRewardTask


@dataclass(frozen=True)
class Responses:
    """Sampled responses to score: `prompt_ids, prompt_mask [N, P]` (left-padded prompts),
    `responses, response_mask [N, T]` (the response tokens; mask False after the end) and
    `decode(ids) -> str`, the tokenizer's (None for token-level tasks)."""

    prompt_ids: Tensor
    prompt_mask: Tensor
    responses: Tensor
    response_mask: Tensor
    decode: Callable[[list[int]], str] | None = None

    def __len__(self) -> int:
        return len(self.responses)

    def texts(self) -> list[str]:
        """The decoded responses (padding and what follows the end dropped)."""
        if self.decode is None:
            raise ConfigError("this reward scores text, but the dataset has no tokenizer to decode the responses: "
                              "pick a text dataset or a token-level reward")
        return [self.decode(row[mask].tolist()) for row, mask in zip(self.responses.cpu(), self.response_mask.cpu())]


class Reward:
    """Base of the rewards: `__call__(responses) -> [N]` float scores. `verifiable`: the scores are
    exactly 0 (wrong) or 1 (right), so Pass@k is defined."""

    verifiable: ClassVar[bool] = False
    reads_text: ClassVar[bool] = False

    def __call__(self, responses: Responses) -> Tensor:
        raise NotImplementedError


class VaderSentiment(Reward):
    """VADER's compound score of each decoded response, in [-1, 1] (positive sentiment is rewarded)."""

    reads_text = True

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise ConfigError("reward=vader needs the vaderSentiment package: pip install 'kdlab[examples]'") from None
        self.analyzer = SentimentIntensityAnalyzer()

    def __call__(self, responses: Responses) -> Tensor:
        return torch.tensor([self.analyzer.polarity_scores(text)["compound"] for text in responses.texts()])


class KnownReward(Reward):
    """The known-reward task's true reward of each response, `max_k (1/T) Σ_t 1[y_t = P_{k,t}]` in [0, 1]."""

    def __init__(self, task: KnownRewardTask | None) -> None:
        if not isinstance(task, KnownRewardTask):
            raise ConfigError("reward=known_reward scores the known-reward task: use dataset=known_reward_prompts or pref_synthetic")
        self.task = task

    def __call__(self, responses: Responses) -> Tensor:
        return self.task.reward(responses.responses.cpu())


class ArithmeticChecker(Reward):
    """1 when the response's digits are the sum of the prompt's operands (`ArithmeticTask.correct`), else 0."""

    verifiable = True

    def __init__(self, task: ArithmeticTask | None) -> None:
        if not isinstance(task, ArithmeticTask):
            raise ConfigError("reward=arithmetic checks the arithmetic task's answers: use dataset=arithmetic_prompts")
        self.task = task

    def __call__(self, responses: Responses) -> Tensor:
        return self.task.correct(responses.prompt_ids.cpu(), responses.responses.cpu()).float()


def score(reward: Reward, responses: Responses) -> Tensor:
    """`reward(responses)` as a float tensor `[N]`, after checking that every score is finite (and, for a
    verifiable reward, 0 or 1); a DataError names the reward and the first bad response otherwise."""
    values = torch.as_tensor(reward(responses), dtype=torch.float32).flatten()
    name = type(reward).__name__
    if len(values) != len(responses):
        raise DataError(f"the reward {name} returned {len(values)} scores for {len(responses)} responses")
    bad = (~torch.isfinite(values)).nonzero().flatten()
    if len(bad):
        shown = responses.texts()[bad[0]] if responses.decode is not None else responses.responses[bad[0]].tolist()
        raise DataError(f"the reward {name} returned {values[bad[0]].item()} for {len(bad)} of {len(values)} responses "
                        f"(first: {shown!r}); a reward must return a finite number for every response")
    if reward.verifiable and not torch.isin(values, torch.tensor([0.0, 1.0])).all():
        raise DataError(f"the verifiable reward {name} returned scores other than 0 and 1")
    return values
