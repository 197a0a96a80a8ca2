"""Preference pairs `(prompt, chosen, rejected)` from Hugging Face `datasets`, tokenised for `PolicyModule`.

Sources: any `datasets.load_dataset(path, name, data_files=...)` — a hub dataset, or local
`json`/`parquet`/`csv` files. Two layouts:
- `explicit`: columns `prompt`, `chosen`, `rejected` (names configurable with `columns`);
- `hh` (Anthropic hh-rlhf): columns `chosen`, `rejected` each hold the whole conversation
  `"\\n\\nHuman: ... \\n\\nAssistant: ..."`; the prompt is everything up to and including the last
  `"\\n\\nAssistant:"` of `chosen`, which `rejected` must share, and the responses are the rest.

A bad pair — an empty response, `chosen == rejected`, or (hh) two conversations that differ before
the last answer — raises a ValueError naming the row (`on_bad_pair="error"`), or is dropped and
counted in `skipped[split]` (`"skip"`). A missing column always raises.

Batches (`kdlab.data.text` layout): `input_ids, attention_mask, labels [2B, L]` (B chosen rows,
then the B rejected rows; right padding; labels `IGNORE_INDEX` on prompt and padding), their
prompts `prompt_ids, prompt_mask [2B, P]`, and `index [B]` (the pair's position in its split).
Each sequence is `prompt + response + EOS`, the prompt cut from the left to `max_prompt_length`
tokens, the response then cut to fit `max_length` (`kdlab.data.text.encode_example`).
"""

import logging
from collections.abc import Mapping

import torch

from kdlab.data.text import DataFiles, TextDataModule, collate_examples, encode_example, first_missing, left_pad
from kdlab.errors import DataError

HH_ASSISTANT = "\n\nAssistant:"
LAYOUTS = ("explicit", "hh")
log = logging.getLogger(__name__)


def parse_pair(row: Mapping[str, str], layout: str, columns: Mapping[str, str]) -> tuple[str, str, str]:
    """`(prompt, chosen response, rejected response)` of one row; ValueError with the reason if it is a bad pair."""
    chosen, rejected = row[columns["chosen"]], row[columns["rejected"]]
    if layout == "hh":
        cut = chosen.rfind(HH_ASSISTANT)
        if cut < 0:
            raise ValueError(f"no {HH_ASSISTANT!r} turn in the chosen conversation")
        prompt = chosen[: cut + len(HH_ASSISTANT)]
        if not rejected.startswith(prompt):
            raise ValueError("chosen and rejected conversations differ before the last Assistant turn")
        chosen, rejected = chosen[len(prompt) :], rejected[len(prompt) :]
    else:
        prompt = row[columns["prompt"]]
    if not chosen.strip() or not rejected.strip():
        raise ValueError("empty response")
    if chosen == rejected:
        raise ValueError("chosen = rejected")
    return prompt, chosen, rejected


class PreferenceDataModule(TextDataModule):
    """Preference data for `PolicyModule` (see the module docstring for layouts, bad pairs and batches).

    `splits` maps kdlab's `train`/`val`/`test` to the dataset's split names; a `val` of None is carved
    from train (`val_fraction`, seeded). `tokenizer` is the policy's (hub name or local path),
    loaded in `setup`; without a pad token, EOS pads. `eval_prompts(split, n)` gives the first n
    prompts of a split (cycling when it has fewer), left-padded, for sampling from the policy.
    """

    batches = "preferences"  # what the batches hold; a regime trains on one kind (kdlab.modules.base.TrainingModule.batches)

    def __init__(
        self,
        path: str,
        tokenizer: str,
        name: str | None = None,
        data_files: DataFiles = None,
        layout: str = "explicit",
        columns: Mapping[str, str] | None = None,
        splits: Mapping[str, str | None] | None = None,
        val_fraction: float = 0.05,
        max_prompt_length: int = 256,
        max_length: int = 512,
        batch_size: int = 8,
        on_bad_pair: str = "error",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(path, tokenizer, name, data_files, batch_size, num_workers)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if on_bad_pair not in ("error", "skip"):
            raise ValueError(f"on_bad_pair must be 'error' or 'skip', got {on_bad_pair!r}")
        if not 0 < max_prompt_length < max_length:
            raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
        self.layout = layout
        self.columns = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"} | dict(columns or {})
        self.splits = {"train": "train", "val": None, "test": "test"} | dict(splits or {})
        self.val_fraction, self.max_prompt_length, self.max_length = val_fraction, max_prompt_length, max_length
        self.on_bad_pair, self.seed = on_bad_pair, seed
        self.pairs: dict[str, list[dict[str, list[int]]]] = {}
        self.skipped: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.pairs:
            return
        self.load_tokenizer()
        data = self.load()
        needed = [self.columns[key] for key in (("chosen", "rejected") if self.layout == "hh" else ("prompt", "chosen", "rejected"))]
        if (hole := first_missing(data, needed, self.data_files)) is not None:
            raise DataError(f"{hole}: every row needs {', '.join(map(repr, needed))} (map other names with dataset.datamodule.columns)")
        if self.splits["val"] is None:
            carved = data[self.splits["train"]].train_test_split(test_size=self.val_fraction, seed=self.seed)
            sources = {"train": carved["train"], "val": carved["test"], "test": data[self.splits["test"]]}
        else:
            sources = {split: data[name] for split, name in self.splits.items()}
        for split, rows in sources.items():
            missing = [column for column in needed if column not in rows.column_names]
            if missing:
                raise DataError(f"the {split} split of {self.path} has no column {', '.join(map(repr, missing))} "
                                 f"(columns: {rows.column_names}); map yours with dataset.datamodule.columns")
            self.pairs[split] = self._encode_split(split, rows)

    def _encode_split(self, split: str, rows) -> list[dict[str, list[int]]]:
        pairs, skipped = [], 0
        for number, row in enumerate(rows):
            try:
                prompt, chosen, rejected = parse_pair(row, self.layout, self.columns)
                pairs.append(self._encode(prompt, chosen, rejected))
            except ValueError as reason:
                if self.on_bad_pair == "error":
                    raise DataError(f"bad preference pair in the {split} split, row {number}: {reason} "
                                     "(dataset.datamodule.on_bad_pair=skip drops and counts such pairs)") from None
                skipped += 1
        self.skipped[split] = skipped
        if skipped:
            log.warning("skipped %d bad pairs of %d in the %s split", skipped, len(rows), split)
        if not pairs:
            raise DataError(f"no usable preference pair in the {split} split of {self.path}")
        return pairs

    def _encode(self, prompt: str, chosen: str, rejected: str) -> dict[str, list[int]]:
        """`{"prompt", "chosen", "rejected"}` ids; ValueError when truncation makes the responses equal."""
        prompt_ids = self.encode(prompt)
        examples = {key: encode_example(prompt_ids, self.encode(text), self.eos_token_id, self.max_prompt_length, self.max_length)
                    for key, text in (("chosen", chosen), ("rejected", rejected))}
        if examples["chosen"]["response"] == examples["rejected"]["response"]:
            raise ValueError("chosen = rejected after tokenisation and truncation")
        return {"prompt": examples["chosen"]["prompt"]} | {key: example["response"] for key, example in examples.items()}

    def collate(self, items: list[tuple[int, dict[str, list[int]]]]) -> dict[str, torch.Tensor]:
        rows = [{"prompt": pair["prompt"], "response": pair[key]} for key in ("chosen", "rejected") for _, pair in items]
        return collate_examples(rows, self.pad_token_id) | {"index": torch.tensor([index for index, _ in items])}

    def split_dataset(self, split: str) -> list[tuple[int, dict[str, list[int]]]]:
        return list(enumerate(self.pairs[split]))

    def eval_prompts(self, split: str, n: int) -> dict[str, torch.Tensor]:
        pairs = self.pairs[split]
        return left_pad([pairs[i % len(pairs)]["prompt"] for i in range(n)], self.pad_token_id)
