"""A verifiable-reward task: single-digit addition, with a checker and an SFT text that errs unevenly.

Tokens: the digits `0 .. base-1`, then `+`, `=` (`token_count = base + 2`). A prompt is `a + b =`
(4 tokens) for every pair of digits (`base²` prompts); its answer is the two digits of `a + b`
(tens, units; `0 7` for 7). The checker accepts exactly that answer.

The task's text, on which the SFT reference is trained, answers each prompt correctly with a
prompt-specific probability — `easy_accuracy` without a carry, `hard_accuracy` with one (a + b ≥
base), each moved by a uniform jitter of ± `jitter` (seeded) — and otherwise wrongly: a prompt with a
carry forgets it (answers `0, (a + b) mod base`) with probability `slip`, and any other wrong answer
is uniform over the wrong answers. So the reference solves easy prompts mostly, hard ones rarely but
not never: the setting where RL with a verifiable reward can raise Pass@1 and lose Pass@k.
"""

from dataclasses import dataclass, field

import torch

from kdlab.tokens import IGNORE_INDEX

ANSWER_LENGTH = 2
PROMPT_LENGTH = 4


@dataclass(frozen=True)
class ArithmeticTask:
    base: int = 10
    easy_accuracy: float = 0.85
    hard_accuracy: float = 0.05
    jitter: float = 0.1
    slip: float = 0.9
    seed: int = 0
    accuracy: torch.Tensor = field(init=False, repr=False, compare=False)  # [base, base]: P(correct answer) in the text

    cache_name = "arithmetic"

    def __post_init__(self) -> None:
        if self.base < 2:
            raise ValueError(f"the arithmetic task needs base >= 2, got {self.base}")
        for name in ("easy_accuracy", "hard_accuracy", "slip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        a, b = torch.meshgrid(torch.arange(self.base), torch.arange(self.base), indexing="ij")
        level = torch.where(a + b >= self.base, self.hard_accuracy, self.easy_accuracy)
        generator = torch.Generator().manual_seed(self.seed)
        jitter = (2 * torch.rand(self.base, self.base, generator=generator) - 1) * self.jitter
        object.__setattr__(self, "accuracy", (level + jitter).clamp(0.0, 1.0))

    @property
    def plus(self) -> int:
        return self.base

    @property
    def equals(self) -> int:
        return self.base + 1

    @property
    def token_count(self) -> int:
        """The vocabulary of a policy for the task: the digits, `+` and `=`."""
        return self.base + 2

    @property
    def sequence_length(self) -> int:
        return PROMPT_LENGTH + ANSWER_LENGTH

    def prompts(self) -> torch.Tensor:
        """Every prompt `[a, +, b, =]`, `[base², 4]`, in the order a = 0, b = 0, 1, ...; a = 1, ..."""
        a, b = torch.meshgrid(torch.arange(self.base), torch.arange(self.base), indexing="ij")
        a, b = a.flatten(), b.flatten()
        return torch.stack([a, torch.full_like(a, self.plus), b, torch.full_like(a, self.equals)], dim=1)

    def answers(self, prompts: torch.Tensor) -> torch.Tensor:
        """The right answers `[N, 2]` (tens, units) of prompts `[N, ≥4]` whose last four tokens are `a + b =`."""
        total = prompts[:, -4] + prompts[:, -2]
        return torch.stack([total // self.base, total % self.base], dim=1)

    def correct(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """`[N]` bool: the response's first two tokens are the prompt's answer (a longer response is wrong)."""
        if responses.shape[1] < ANSWER_LENGTH:
            return torch.zeros(len(responses), dtype=torch.bool)
        right = (responses[:, :ANSWER_LENGTH] == self.answers(prompts)).all(-1)
        return right & (responses.shape[1] == ANSWER_LENGTH)

    def sample_answers(self, prompts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Answers `[N, 2]` from the task's text for prompts `[N, 4]` (see the module docstring)."""
        right = self.answers(prompts)
        a, b = prompts[:, 0], prompts[:, 2]
        n = len(prompts)
        correct = torch.rand(n, generator=generator) < self.accuracy[a, b]
        slipped = ((a + b) >= self.base) & (torch.rand(n, generator=generator) < self.slip)
        forgotten = torch.stack([torch.zeros_like(a), (a + b) % self.base], dim=1)
        # a uniformly drawn wrong answer: an offset 1 .. base²-1 from the right one, modulo base²
        space = self.base**ANSWER_LENGTH
        offset = torch.randint(1, space, (n,), generator=generator)
        wrong = (right[:, 0] * self.base + right[:, 1] + offset) % space
        uniform = torch.stack([wrong // self.base, wrong % self.base], dim=1)
        wrong_answer = torch.where(slipped.unsqueeze(-1), forgotten, uniform)
        return torch.where(correct.unsqueeze(-1), right, wrong_answer)

    def sft_corpus(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`n` sequences of the task's text in the LM layout: `input_ids [n, 6]` (prompt, answer),
        `attention_mask`, `labels` (`IGNORE_INDEX` on the prompt)."""
        prompts = self.prompts()[torch.randint(self.base**2, (n,), generator=generator)]
        input_ids = torch.cat([prompts, self.sample_answers(prompts, generator)], dim=1)
        labels = input_ids.clone()
        labels[:, :PROMPT_LENGTH] = IGNORE_INDEX
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
