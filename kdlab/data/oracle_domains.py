"""An oracle mixture of N domains, for DDK (docs/methods.md §7.8): one oracle per domain, one teacher.

Built in `setup` (the oracles and the teacher of `kdlab.oracle.lm`; seeded by the first domain's
seed): domain d's sequences start with its tag, token d, then a prompt and a response of the domains'
shared lengths, all sampled from the domain's oracle p*_d.

- train: `prompts.train` prompts per domain from p*_d, each answered by `responses` ("oracle": the
  domain's own text, a multi-domain pre-training corpus; "teacher": the mixture teacher's completions);
  drawn by `kdlab.data.domains.DomainWeightedSampler` with the current domain mixture (uniform until
  `set_domain_weights`);
- val/test: `prompts.val` / `prompts.test` held-out sequences per domain, interleaved (row r belongs
  to domain r mod N), so the first n rows cover the domains evenly.

Batches: the oracle layout (`kdlab.data.oracle.as_batch`) plus `domain [B]`. The data module offers
`domains`, `oracles` (name -> p*_d, for per-domain golden figures), `domain_loader(split, d)`,
`eval_prompts(split, n)`, `vocab_size`, and no single `oracle` (no metric pools the domains' truths).
"""

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from kdlab.data.domains import DomainMixture, DomainWeightedSampler
from kdlab.data.oracle import SPLITS, as_batch
from kdlab.data.splits import SplitDataModule
from kdlab.oracle.lm import continue_sequences, domain_oracles, domain_teacher_lm, sample_sequences, sequence_length


class OracleDomainsDataModule(DomainMixture, SplitDataModule):
    """The domain mixture's data (see the module docstring). `domains`: name -> oracle spec (the
    `kdlab.oracle.lm` keys; shared vocabulary and lengths), `teacher`: the teacher spec."""

    eos_token_id = None  # responses have a fixed length
    pad_token_id = None  # nothing is padded
    oracle = None

    def __init__(
        self,
        domains: Mapping[str, Mapping[str, Any]],
        teacher: Mapping[str, Any],
        prompts: Mapping[str, int],
        responses: str = "oracle",
        batch_size: int = 32,
        cache_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if responses not in ("teacher", "oracle"):
            raise ValueError(f"responses must be 'teacher' or 'oracle', got {responses!r}")
        if set(prompts) != set(SPLITS) or min(prompts.values()) < 1:
            raise ValueError(f"prompts needs a positive count per domain for each of {SPLITS}, got {dict(prompts)}")
        self.domain_specs = {name: dict(spec) for name, spec in domains.items()}
        self.teacher_spec, self.prompts, self.responses, self.cache_dir = dict(teacher), dict(prompts), responses, cache_dir
        self.init_weights(list(self.domain_specs))
        self.prompt_length = next(iter(self.domain_specs.values()))["prompt_length"]
        self.oracles: dict[str, Any] = {}
        self.sequences: dict[str, torch.Tensor] = {}
        self.domain_of: dict[str, torch.Tensor] = {}

    @property
    def vocab_size(self) -> int:
        return next(iter(self.domain_specs.values()))["vocab_size"]

    def setup(self, stage: str | None = None) -> None:
        if self.sequences:
            return
        self.oracles = domain_oracles(self.domain_specs)
        teacher = domain_teacher_lm(self.domain_specs, self.teacher_spec, self.cache_dir) if self.responses == "teacher" else None
        first = next(iter(self.domain_specs.values()))
        generator = torch.Generator().manual_seed(first["seed"] + 3)
        length, n = sequence_length(first), len(self.domains)
        for split in ("val", "test"):
            rows = [sample_sequences(oracle, self.prompts[split], length, generator, start=tag) for tag, oracle in enumerate(self.oracles.values())]
            self.sequences[split] = torch.stack(rows, dim=1).flatten(0, 1)  # interleaved: row r is domain r mod N
            self.domain_of[split] = torch.arange(n).repeat(self.prompts[split])
        train = []
        for tag, oracle in enumerate(self.oracles.values()):
            prompts = sample_sequences(oracle, self.prompts["train"], 1 + self.prompt_length, generator, start=tag)
            train.append(continue_sequences(teacher if teacher is not None else oracle, prompts, first["response_length"], generator))
        self.sequences["train"] = torch.cat(train)
        self.domain_of["train"] = torch.arange(n).repeat_interleave(self.prompts["train"])

    def batch(self, split: str, rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The rows (indices into `split`) as a batch: the oracle layout and their `domain`."""
        index = torch.stack(rows)
        return as_batch(self.sequences[split][index], self.prompt_length, index) | {"domain": self.domain_of[split][index]}

    def _rows(self, split: str, rows: torch.Tensor, **loader: Any) -> DataLoader:
        return DataLoader(rows, batch_size=self.batch_size, collate_fn=partial(self.batch, split), num_workers=self.num_workers, **loader)

    def train_dataloader(self) -> DataLoader:
        sampler = DomainWeightedSampler(self.domain_of["train"], lambda: self.domain_weights)
        return self._rows("train", torch.arange(len(self.sequences["train"])), sampler=sampler)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return self._rows(split, torch.arange(len(self.sequences[split])))

    def domain_loader(self, split: str, domain: int) -> DataLoader:
        """The rows of domain `domain` (its index in `domains`) of `split`, in batches."""
        return self._rows(split, torch.nonzero(self.domain_of[split] == domain).flatten())

    def eval_prompts(self, split: str, n: int) -> dict[str, torch.Tensor]:
        prompts = self.sequences[split][:n, : 1 + self.prompt_length]
        return {"prompt_ids": prompts, "prompt_mask": torch.ones_like(prompts)}

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))
