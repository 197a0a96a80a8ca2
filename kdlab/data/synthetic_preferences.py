"""Preference pairs for the known-reward task (`kdlab.synthetic`): offline, and the true reward is known.

Pipeline, all in `setup` (so that building the data module costs nothing): the task's SFT
reference (`kdlab.synthetic.sft_policy`, trained once and cached), `2 N` responses sampled from
it, paired and labelled by Bradley–Terry on the true reward (the DPO paper's IMDb protocol with a
known reward in place of a sentiment classifier). Everything is seeded by `task.seed`: every run
of a sweep sees the same reference and the same pairs.
"""

import logging

import torch
from torch.utils.data import Dataset

from kdlab.data.splits import SplitDataModule
from kdlab.models.generation import sample_responses
from kdlab.synthetic.reference import prompt_and_response, sft_policy
from kdlab.synthetic.task import KnownRewardTask

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


class PairDataset(Dataset):
    """`(chosen [N, T], rejected [N, T])` token ids; items are `(index, chosen, rejected)`."""

    def __init__(self, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        self.chosen, self.rejected = chosen, rejected

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        return index, self.chosen[index], self.rejected[index]


class SyntheticPreferenceDataModule(SplitDataModule):
    """Known-reward preference pairs in `kdlab.data.preference`'s batch layout.

    Batches: `input_ids, attention_mask, labels [2B, 1+T]` (B chosen rows, then B rejected; the
    prompt token's label is `IGNORE_INDEX`) and `index [B]`. Pairs whose two responses are identical carry no
    preference: `on_bad_pair="skip"` (default here: with a small vocabulary they occur by chance)
    drops and counts them, `"error"` raises. For `PolicyModule`'s evaluation: `eval_prompts(split, n)`
    (`prompt_ids, prompt_mask`: n copies of the prompt token) and `score(responses)` -> `{"reward": mean true reward,
    "modes": modes reached by ≥ 1% of the responses}`.
    """

    batches = "preferences"  # what the batches hold; a regime trains on one kind (kdlab.modules.base.TrainingModule.batches)

    def __init__(
        self,
        task: KnownRewardTask,
        sft: dict,
        pairs: dict[str, int],
        batch_size: int = 64,
        cache_dir: str | None = None,
        on_bad_pair: str = "skip",
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if on_bad_pair not in ("error", "skip"):
            raise ValueError(f"on_bad_pair must be 'error' or 'skip', got {on_bad_pair!r}")
        if set(pairs) != set(SPLITS) or min(pairs.values()) < 1:
            raise ValueError(f"pairs needs a positive count for each of {SPLITS}, got {dict(pairs)}")
        self.task, self.sft, self.pairs = task, sft, dict(pairs)
        self.cache_dir, self.on_bad_pair = cache_dir, on_bad_pair
        self.datasets: dict[str, PairDataset] = {}
        self.skipped = 0

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size + 1

    @property
    def eos_token_id(self) -> None:
        return None  # responses have a fixed length

    @property
    def pad_token_id(self) -> None:
        return None  # nothing is ever padded

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        reference = sft_policy(self.task, self.sft["model"], self.sft["recipe"], self.cache_dir)
        total = sum(self.pairs.values())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.task.seed + 1)
            prompts = torch.full((2 * total, 1), self.task.bos)
            responses = sample_responses(reference, prompts, torch.ones_like(prompts), self.task.length)["responses"]
        chosen, rejected = self.task.label(responses[:total], responses[total:], torch.Generator().manual_seed(self.task.seed + 2))
        distinct = (chosen != rejected).any(-1)
        self.skipped = int((~distinct).sum())
        if self.skipped and self.on_bad_pair == "error":
            raise ValueError(f"{self.skipped} of {total} sampled pairs have identical responses (chosen = rejected); "
                             "set dataset.datamodule.on_bad_pair=skip to drop them")
        if self.skipped:
            log.warning("skipped %d of %d pairs whose two responses are identical", self.skipped, total)
        bounds = torch.tensor([0, *self.pairs.values()]).cumsum(0).tolist()
        for split, start, end in zip(SPLITS, bounds, bounds[1:]):
            keep = distinct[start:end]
            self.datasets[split] = PairDataset(chosen[start:end][keep], rejected[start:end][keep])

    def collate(self, items: list[tuple[int, torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        indices, chosen, rejected = zip(*items)
        return prompt_and_response(self.task, torch.stack([*chosen, *rejected])) | {"index": torch.tensor(indices)}

    def split_dataset(self, split: str) -> "PairDataset":
        return self.datasets[split]

    def eval_prompts(self, split: str, n: int) -> dict[str, torch.Tensor]:
        prompts = torch.full((n, 1), self.task.bos)
        return {"prompt_ids": prompts, "prompt_mask": torch.ones_like(prompts)}

    def score(self, responses: torch.Tensor) -> dict[str, torch.Tensor]:
        responses = responses.cpu()
        return {"reward": self.task.reward(responses).mean(), "modes": torch.tensor(float(self.task.modes_reached(responses)))}
