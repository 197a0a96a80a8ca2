"""Data of the teacher-hacking protocol: prompts from the oracle, responses from the teacher (or the oracle).

Built in `setup` (instantiating the data module costs nothing): the oracle p* and the cached teacher
p_T (`kdlab.oracle.lm`), and the splits, all seeded by the oracle's seed:

- train, `online=False` (offline): `prompts.train` prompts sampled from p*, each with
  `completions` responses sampled once from `responses` ("teacher": p_T, the paper's distillation
  corpus; or "oracle": a pre-training corpus of true text); the student meets this fixed corpus every
  epoch. With `noise` > 0, that fraction of the training rows get uniformly random responses (junk
  documents, for MiniPLM's difference sampling, docs/methods.md §7.7); `noisy [N]` marks them.
- train, `online=True`: every batch is `batch_size` fresh prompts from p* with fresh responses from
  `responses`, `batches_per_epoch` batches an epoch (the paper's online generation).
- val/test: `prompts.val` / `prompts.test` held-out sequences sampled from p* (prompt and response):
  the student's NLL there is its fit to the true language; their prompts are the held-out prompts of
  the proxy and golden metrics.

Batches (`kdlab.data.text` layout, nothing padded): `input_ids, attention_mask, labels [B, 1+P+T]`
(labels -100 on BOS and prompt), `prompt_ids, prompt_mask [B, 1+P]`, `index [B]`. The data module
also offers `oracle` (for the golden metrics), `eval_prompts(split, n)`, `vocab_size`, and no
tokenizer (token ids are the words; `decode` joins them).
"""

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from kdlab.data.splits import SplitDataModule
from kdlab.errors import ConfigError
from kdlab.oracle.lm import continue_sequences, corrupt, oracle_lm, sample_sequences, sequence_length, teacher_lm
from kdlab.tokens import IGNORE_INDEX

SPLITS = ("train", "val", "test")


def as_batch(sequences: torch.Tensor, prompt_length: int, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """`[N, 1+P+T]` sequences -> the LM batch layout (labels -100 on BOS and the P prompt tokens)."""
    labels = sequences.clone()
    labels[:, : 1 + prompt_length] = IGNORE_INDEX
    prompts = sequences[:, : 1 + prompt_length]
    return {"input_ids": sequences, "attention_mask": torch.ones_like(sequences), "labels": labels,
            "prompt_ids": prompts, "prompt_mask": torch.ones_like(prompts),
            "index": index if index is not None else torch.arange(len(sequences))}


class SequenceDataset(torch.utils.data.Dataset):
    """Fixed sequences `[N, L]`; items are `(index, sequence)`."""

    def __init__(self, sequences: torch.Tensor) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, self.sequences[index]


class FreshBatches(IterableDataset):
    """`batches` batches per pass, each of `batch_size` new prompts from the oracle and new responses
    from `responder` (torch's global RNG, which the run seeds)."""

    def __init__(self, datamodule: "OracleDataModule", batches: int) -> None:
        self.datamodule, self.batches = datamodule, batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(self.batches):
            yield as_batch(self.datamodule.fresh_sequences(self.datamodule.batch_size), self.datamodule.prompt_length)


class OracleDataModule(SplitDataModule):
    """The oracle experiment's data (see the module docstring)."""

    batches = "text"  # what the batches hold; a regime trains on one kind (kdlab.modules.base.TrainingModule.batches)

    def __init__(
        self,
        oracle: Mapping[str, Any],
        teacher: Mapping[str, Any],
        prompts: Mapping[str, int],
        responses: str = "teacher",
        completions: int = 1,
        online: bool = False,
        batches_per_epoch: int = 32,
        batch_size: int = 32,
        cache_dir: str | None = None,
        num_workers: int = 0,
        noise: float = 0.0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if responses not in ("teacher", "oracle"):
            raise ValueError(f"responses must be 'teacher' or 'oracle', got {responses!r}")
        if set(prompts) != set(SPLITS) or min(prompts.values()) < 1 or completions < 1:
            raise ValueError(f"prompts needs a positive count for each of {SPLITS} and completions >= 1, got {dict(prompts)}, {completions}")
        if not 0.0 <= noise <= 1.0 or (noise > 0 and online):
            raise ConfigError(f"dataset.datamodule.noise must be in [0, 1] and is for the offline corpus only, got {noise} (online={online})")
        self.oracle_spec, self.teacher_spec, self.prompts = dict(oracle), dict(teacher), dict(prompts)
        self.responses, self.completions, self.online, self.batches_per_epoch = responses, completions, online, batches_per_epoch
        self.cache_dir, self.noise = cache_dir, noise
        self.prompt_length = self.oracle_spec["prompt_length"]
        self.oracle = None
        self.teacher = None
        self.sequences: dict[str, torch.Tensor] = {}
        self.noisy: torch.Tensor | None = None  # [N] bool: training rows with junk responses

    @property
    def vocab_size(self) -> int:
        return self.oracle_spec["vocab_size"]

    eos_token_id = None  # responses have a fixed length
    pad_token_id = None  # nothing is padded

    def setup(self, stage: str | None = None) -> None:
        if self.sequences:
            return
        self.oracle = oracle_lm(self.oracle_spec)
        self.teacher = teacher_lm(self.oracle_spec, self.teacher_spec, self.cache_dir)
        generator = torch.Generator().manual_seed(self.oracle_spec["seed"] + 3)  # not the teacher's corpus (seed + 1)
        length = sequence_length(self.oracle_spec)
        for split in ("val", "test"):
            self.sequences[split] = sample_sequences(self.oracle, self.prompts[split], length, generator)
        prompts = sample_sequences(self.oracle, self.prompts["train"], 1 + self.prompt_length, generator)
        train = self.complete(prompts.repeat_interleave(self.completions, dim=0), generator)
        self.sequences["train"], self.noisy = corrupt(train, self.noise, 1 + self.prompt_length, self.vocab_size, generator)

    def complete(self, prompts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Prompts `[N, 1+P]` followed by responses sampled (T=1) from `responses`."""
        model = self.teacher if self.responses == "teacher" else self.oracle
        return continue_sequences(model, prompts, self.oracle_spec["response_length"], generator)

    def fresh_sequences(self, n: int) -> torch.Tensor:
        """n new prompts from the oracle, completed by `responses` (online data; torch's global RNG)."""
        return self.complete(sample_sequences(self.oracle, n, 1 + self.prompt_length))

    def split_dataset(self, split: str) -> SequenceDataset:
        return SequenceDataset(self.sequences[split])

    def collate(self, items: list[tuple[int, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return as_batch(torch.stack([sequence for _, sequence in items]), self.prompt_length, torch.tensor([index for index, _ in items]))

    def select_train(self, indices) -> None:
        if self.online:
            raise ConfigError("dataset=oracle_online draws fresh data every batch: a selection of the training corpus needs dataset=oracle")
        super().select_train(indices)

    def train_dataloader(self) -> DataLoader:
        if not self.online:
            return super().train_dataloader()
        # Its own generator: creating the loader's iterator then draws nothing from the global one, whose
        # state the run seeds at every epoch and step (kdlab.resumable) and the fresh batches sample from.
        return DataLoader(FreshBatches(self, self.batches_per_epoch), batch_size=None, generator=torch.Generator())

    def eval_prompts(self, split: str, n: int) -> dict[str, torch.Tensor]:
        prompts = self.sequences[split][:n, : 1 + self.prompt_length]
        return {"prompt_ids": prompts, "prompt_mask": torch.ones_like(prompts)}

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))
