"""Prompts of a synthetic task (`kdlab.synthetic`) for the on-policy regime, with the task's exact metrics.

- the known-reward task (`KnownRewardTask`): every prompt is its one prompt token; a split of n rows
  is n copies of it (the number of prompts a step or an evaluation answers);
- the arithmetic task (`ArithmeticTask`): the `base²` prompts `a + b =`; a split of n rows cycles
  through them in order (n = base²: each prompt once).

Batches: `prompt_ids, prompt_mask [B, P]` and `index [B]` (the row's position in its split; for the
arithmetic task, the prompt's number). `exact_metrics(policy, reference, target)` gives the task's
exact values (`kdlab.synthetic.exact`): for the known-reward task the exact reward, KL to the
reference, entropy, modes and — with a target (f-DPG's) — the true divergences to it; for the
arithmetic task the exact Pass@k for `exact_pass_ks`.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdlab.data.splits import SplitDataModule
from kdlab.errors import ConfigError
from kdlab.synthetic.arithmetic import ArithmeticTask
from kdlab.synthetic.exact import all_sequences, arithmetic_metrics, known_reward_metrics, response_logps
from kdlab.synthetic.task import KnownRewardTask

SPLITS = ("train", "val", "test")


class PromptRows(Dataset):
    """`[n, P]` prompts; items are `(index, prompt)`."""

    def __init__(self, prompts: Tensor) -> None:
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        return index, self.prompts[index]


class TaskPromptDataModule(SplitDataModule):
    """Prompt batches of a synthetic task (see the module docstring). `rows`: split -> number of prompt rows."""

    batches = "prompts"  # what the batches hold; a regime trains on one kind (kdlab.modules.base.TrainingModule.batches)

    def __init__(
        self,
        task: KnownRewardTask | ArithmeticTask,
        rows: dict[str, int],
        batch_size: int,
        exact_pass_ks: Sequence[int] = (1, 4, 16, 64, 256),
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if set(rows) != set(SPLITS) or min(rows.values()) < 1:
            raise ConfigError(f"dataset.datamodule.rows needs a positive count for each of {SPLITS}, got {dict(rows)}")
        self.task, self.rows, self.exact_pass_ks = task, dict(rows), tuple(exact_pass_ks)
        self.datasets: dict[str, PromptRows] = {}
        self.reference_cache: tuple[int, Tensor] | None = None  # (id of the reference, its log-probs of every sequence)

    @property
    def vocab_size(self) -> int:
        return self.task.token_count

    @property
    def eos_token_id(self) -> None:
        return None  # responses have a fixed length

    @property
    def pad_token_id(self) -> None:
        return None

    def task_prompts(self) -> Tensor:
        if isinstance(self.task, KnownRewardTask):
            return torch.full((1, 1), self.task.bos)
        return self.task.prompts()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        prompts = self.task_prompts()
        for split in SPLITS:
            self.datasets[split] = PromptRows(prompts[torch.arange(self.rows[split]) % len(prompts)])

    def split_dataset(self, split: str) -> PromptRows:
        return self.datasets[split]

    def collate(self, items: list[tuple[int, Tensor]]) -> dict[str, Tensor]:
        indices, prompts = zip(*items)
        prompt_ids = torch.stack(prompts)
        return {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "index": torch.tensor(indices)}

    def prompts(self, split: str) -> dict[str, Tensor]:
        """Every prompt row of a split as one batch."""
        return self.collate([self.datasets[split][i] for i in range(len(self.datasets[split]))])

    def eval_prompts(self, split: str, n: int) -> dict[str, Tensor]:
        rows = self.datasets[split]
        return self.collate([rows[i % len(rows)] for i in range(n)])

    def exact_metrics(self, policy: nn.Module, reference: nn.Module, target: Callable[[Tensor, Tensor], Tensor] | None) -> dict[str, float]:
        if isinstance(self.task, ArithmeticTask):
            return arithmetic_metrics(self.task, policy, self.exact_pass_ks)
        if self.reference_cache is None or self.reference_cache[0] != id(reference):
            responses = all_sequences(self.task.token_count, self.task.length)
            self.reference_cache = (id(reference), response_logps(reference, torch.full((len(responses), 1), self.task.bos), responses))
        return known_reward_metrics(self.task, policy, self.reference_cache[1], target)
