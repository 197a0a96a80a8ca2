"""The known-reward task: text whose true reward is a fixed function of its tokens, with several modes.

Responses are `length` tokens over a vocabulary of `vocab_size` content tokens, generated after a
one-token prompt (`bos = vocab_size`). The task draws `n_modes` target patterns `P_k` (distinct
random sequences, from `seed`). The true reward of a response is its best match to a pattern:

    r(y) = max_k (1/T) Σ_t 1[y_t = P_{k,t}]        ∈ [0, 1], = 1 exactly on the K modes.

Human-written text stands in as the task's data distribution: pick mode k with probability
`mode_weights[k]`, then keep each token of `P_k` with probability `keep` and otherwise draw it
uniformly — so an SFT model trained on it knows every mode, unevenly, at low reward (~ keep).
Preference labels follow Bradley–Terry on the true reward:
`P(y_1 ≻ y_2) = σ((r(y_1) − r(y_2)) / bt_temperature)`.
"""

from dataclasses import dataclass, field

import torch

from kdlab.tokens import IGNORE_INDEX


@dataclass(frozen=True)
class KnownRewardTask:
    vocab_size: int = 8
    length: int = 8
    n_modes: int = 4
    mode_weights: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    keep: float = 0.35
    bt_temperature: float = 0.1
    mode_threshold: float = 0.75  # a response "reaches" mode k when it matches P_k on at least this fraction of tokens
    seed: int = 0
    patterns: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode_weights", tuple(float(weight) for weight in self.mode_weights))  # lists from configs
        if len(self.mode_weights) != self.n_modes or min(self.mode_weights) < 0 or sum(self.mode_weights) <= 0:
            raise ValueError(f"mode_weights needs {self.n_modes} non-negative weights, got {self.mode_weights}")
        if not 0.0 <= self.keep <= 1.0 or self.bt_temperature <= 0:
            raise ValueError(f"need 0 <= keep <= 1 and bt_temperature > 0, got keep={self.keep}, bt_temperature={self.bt_temperature}")
        if self.vocab_size**self.length < 2 * self.n_modes:
            raise ValueError("the response space is too small for that many distinct modes")
        generator = torch.Generator().manual_seed(self.seed)
        patterns = torch.randint(self.vocab_size, (self.n_modes, self.length), generator=generator)
        while len(torch.unique(patterns, dim=0)) < self.n_modes:  # distinct modes
            patterns = torch.randint(self.vocab_size, (self.n_modes, self.length), generator=generator)
        object.__setattr__(self, "patterns", patterns)

    cache_name = "pref_synthetic"  # the SFT reference's cache entries are <cache_name>-<fingerprint>

    @property
    def bos(self) -> int:
        """The prompt token (the vocabulary of a policy is `vocab_size + 1`)."""
        return self.vocab_size

    @property
    def token_count(self) -> int:
        """The vocabulary of a policy for the task: the content tokens and the prompt token."""
        return self.vocab_size + 1

    @property
    def sequence_length(self) -> int:
        return self.length + 1

    def sequences(self, responses: torch.Tensor) -> dict[str, torch.Tensor]:
        """`[N, T]` responses after the prompt token, in the LM layout: `input_ids [N, 1+T]`,
        `attention_mask`, `labels` (`IGNORE_INDEX` on the prompt)."""
        input_ids = torch.cat([torch.full((len(responses), 1), self.bos), responses], dim=1)
        labels = input_ids.clone()
        labels[:, 0] = IGNORE_INDEX
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}

    def sft_corpus(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`n` sequences of the task's text (`sample_corpus`) in the LM layout (`sequences`)."""
        return self.sequences(self.sample_corpus(n, generator))

    def matches(self, responses: torch.Tensor) -> torch.Tensor:
        """`[N, T]` token ids -> `[N, K]` fraction of positions equal to each pattern."""
        return (responses.unsqueeze(1) == self.patterns.to(responses.device)).float().mean(-1)

    def reward(self, responses: torch.Tensor) -> torch.Tensor:
        """The true reward `r(y) = max_k match(y, P_k)`, `[N, T] -> [N]`."""
        return self.matches(responses).max(-1).values

    def modes_reached(self, responses: torch.Tensor, min_share: float = 0.01) -> int:
        """How many modes at least `min_share` of the responses reach (match ≥ `mode_threshold`)."""
        reached = self.matches(responses) >= self.mode_threshold  # [N, K]
        return int((reached.float().mean(0) >= min_share).sum())

    def sample_corpus(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """`n` responses `[n, T]` from the task's data distribution (noisy copies of the modes)."""
        modes = torch.multinomial(torch.tensor(self.mode_weights, dtype=torch.float), n, replacement=True, generator=generator)
        noise = torch.randint(self.vocab_size, (n, self.length), generator=generator)
        keep = torch.rand(n, self.length, generator=generator) < self.keep
        return torch.where(keep, self.patterns[modes], noise)

    def label(self, first: torch.Tensor, second: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Bradley–Terry labels on the true reward: `(chosen, rejected)`, each `[N, T]`."""
        p_first = torch.sigmoid((self.reward(first) - self.reward(second)) / self.bt_temperature)
        first_wins = (torch.rand(len(first), generator=generator) < p_first).unsqueeze(-1)
        return torch.where(first_wins, first, second), torch.where(first_wins, second, first)
