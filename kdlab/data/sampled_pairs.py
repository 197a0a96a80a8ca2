"""Preference pairs sampled from a base policy and labelled by a reward: the controlled-generation
protocol of the DPO, f-DPO and f-DPG papers (IMDb sentiment) with any prompts, policy and reward.

Pipeline, in `setup` (building the data module costs nothing): the prompts (one per line of a text
file; the shipped `kdlab/data/assets/movie_review_prompts.txt` by default), shuffled with `seed` and cut
into the splits' counts; for each prompt two responses of the base policy (`policy`: the arguments of
`kdlab.models.hf.causal_lm`, e.g. a GGUF checkpoint) at temperature 1, at most `max_new_tokens`; the
reward of each (`kdlab.rewards`); the one with the higher reward is chosen, ties are dropped. The pairs
are written once to `<cache_dir>/sampled_pairs-<fingerprint>/{train,val,test}.jsonl` (prompt,
chosen, rejected and both rewards) under a file lock, so every run of a sweep trains on the same
pairs whoever samples them first, and then read as any preference jsonl (`PreferenceDataModule`).
"""

import json
import logging
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from kdlab.data.preference import PreferenceDataModule
from kdlab.data.text import left_pad
from kdlab.errors import ConfigError, DataError
from kdlab.fingerprint import fingerprint
from kdlab.models.generation import sample_responses
from kdlab.models.hf import causal_lm, load_tokenizer
from kdlab.rewards import Responses, Reward, score

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
DEFAULT_PROMPTS = "movie_review_prompts.txt"


class SampledPairDataModule(PreferenceDataModule):
    """Pairs of base-policy responses labelled by `reward` (see the module docstring); batches, `eval_prompts`
    and `decode` as `PreferenceDataModule`'s. `prompts_file`: null for the shipped movie-review openings;
    `counts`: prompts per split; `tokenizer`, `tokenizer_gguf_file`: the policy's tokenizer."""

    def __init__(
        self,
        policy: dict[str, Any],
        reward: Reward,
        tokenizer: str,
        counts: dict[str, int],
        cache_dir: str,
        prompts_file: str | None = None,
        tokenizer_gguf_file: str | None = None,
        max_new_tokens: int = 24,
        sampling_batch: int = 16,
        max_prompt_length: int = 64,
        max_length: int = 128,
        batch_size: int = 4,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__("json", tokenizer, data_files={}, splits={split: split for split in SPLITS}, max_prompt_length=max_prompt_length,
                         max_length=max_length, batch_size=batch_size, on_bad_pair="skip", num_workers=num_workers, seed=seed)
        if set(counts) != set(SPLITS) or min(counts.values()) < 1:
            raise ConfigError(f"dataset.datamodule.counts needs a positive number of prompts for each of {SPLITS}, got {dict(counts)}")
        if max_new_tokens < 1 or sampling_batch < 1:
            raise ConfigError("dataset.datamodule.max_new_tokens and sampling_batch must be >= 1")
        self.policy, self.reward, self.counts, self.cache_dir = dict(policy), reward, dict(counts), cache_dir
        self.prompts_file, self.tokenizer_gguf_file = prompts_file, tokenizer_gguf_file
        self.max_new_tokens, self.sampling_batch = max_new_tokens, sampling_batch

    def load_tokenizer(self) -> None:
        self.tokenizer = load_tokenizer(self.tokenizer_name, self.tokenizer_gguf_file, self.policy.get("cache_dir"))

    def read_prompts(self) -> dict[str, list[str]]:
        """The prompts of each split: the file's non-empty lines, shuffled with `seed`, cut into `counts`."""
        path = Path(self.prompts_file) if self.prompts_file else files("kdlab.data") / "assets" / DEFAULT_PROMPTS
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        needed = sum(self.counts.values())
        if len(lines) < needed:
            raise DataError(f"{path} has {len(lines)} prompts but dataset.datamodule.counts asks for {needed}: lower the counts")
        order = torch.randperm(len(lines), generator=torch.Generator().manual_seed(self.seed)).tolist()
        shuffled, start, out = [lines[i] for i in order], 0, {}
        for split in SPLITS:
            out[split], start = shuffled[start : start + self.counts[split]], start + self.counts[split]
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.pairs:
            return
        if self.reward is None:
            raise ConfigError("dataset=sentiment_pairs labels its pairs by a reward: give reward=NAME (e.g. reward=vader)")
        self.load_tokenizer()
        prompts = self.read_prompts()
        key = fingerprint({"prompts": prompts, "policy": self.policy, "reward": type(self.reward).__qualname__,
                           "max_new_tokens": self.max_new_tokens, "seed": self.seed})
        entry = Path(self.cache_dir) / f"sampled_pairs-{key}"
        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock"):
            if not all((entry / f"{split}.jsonl").exists() for split in SPLITS):
                self.sample_pairs(prompts, entry)
        self.data_files = {split: str(entry / f"{split}.jsonl") for split in SPLITS}
        super().setup(stage)

    def sample_pairs(self, prompts: dict[str, list[str]], entry: Path) -> None:
        """Sample, score and label the pairs of every split; write them to `entry/<split>.jsonl`."""
        log.info("sampling preference pairs from %s (once): %s", self.policy.get("name_or_path"), entry)
        policy = causal_lm(**self.policy).eval()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        entry.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            rows = []
            for start in range(0, len(prompts[split]), self.sampling_batch):
                texts = prompts[split][start : start + self.sampling_batch]
                encoded = left_pad([self.encode(text)[-self.max_prompt_length :] for text in texts for _ in range(2)], self.pad_token_id)
                sampled = sample_responses(policy, encoded["prompt_ids"], encoded["prompt_mask"], self.max_new_tokens,
                                           eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id)
                responses = Responses(encoded["prompt_ids"], encoded["prompt_mask"], sampled["responses"], sampled["response_mask"], self.decode)
                rewards, decoded = score(self.reward, responses).view(-1, 2), responses.texts()
                for i, text in enumerate(texts):
                    (r1, r2), (y1, y2) = rewards[i].tolist(), decoded[2 * i : 2 * i + 2]
                    if r1 != r2 and y1.strip() and y2.strip() and y1 != y2:
                        chosen, rejected = ((y1, r1), (y2, r2)) if r1 > r2 else ((y2, r2), (y1, r1))
                        rows.append({"prompt": text, "chosen": chosen[0], "rejected": rejected[0],
                                     "reward_chosen": chosen[1], "reward_rejected": rejected[1]})
            if not rows:
                raise DataError(f"no pair of the {split} split has two responses with different rewards: more prompts or tokens")
            (entry / f"{split}.jsonl.partial").write_text("".join(json.dumps(row) + "\n" for row in rows))
            (entry / f"{split}.jsonl.partial").rename(entry / f"{split}.jsonl")
        torch.random.set_rng_state(generator_state)
