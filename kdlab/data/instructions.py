"""Instruction-following data (Dolly-style `instruction`, `context`, `response`) for LM distillation.

Source: any `datasets.load_dataset(path, name, data_files=...)` — `databricks/databricks-dolly-15k`
from the hub, or local `json`/`parquet`/`csv` files; `columns` renames the three fields (a missing
`context` column means no context). The prompt is the MiniLLM/DistiLLM (Alpaca) template, the one
with an `### Input:` section when the row has a context; the loss reads response tokens only.

Batches (`kdlab.data.text` layout): `input_ids, attention_mask, labels [B, L]` (labels `IGNORE_INDEX` on
prompt and padding), `prompt_ids, prompt_mask [B, P]` (left-padded, for on-policy generation) and
`index [B]`. For evaluation: `eval_prompts(split, n)` (the first n prompts of a split, left-padded)
and `references(split, n)` (their reference responses, for ROUGE-L).
"""

from collections.abc import Mapping

import torch

from kdlab.data.text import DataFiles, TextDataModule, collate_examples, encode_example, left_pad
from kdlab.errors import DataError

# MiniLLM's `tools/process_data_dolly.py` (Gu et al. 2024), which DistiLLM and ABKD reuse.
TEMPLATE = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
TEMPLATE_WITH_CONTEXT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)


class InstructionDataModule(TextDataModule):
    """Instruction/response pairs, tokenised with the student's tokenizer (see the module docstring).

    `splits` maps kdlab's `train`/`val`/`test` to the dataset's split names; a `val` or `test` of
    None is carved from train (`val_size`, `test_size` rows, seeded by `seed`) — Dolly ships only a
    train split. Rows whose response is empty are dropped.
    """

    batches = "text"  # what the batches hold; a regime trains on one kind (kdlab.modules.base.TrainingModule.batches)

    def __init__(
        self,
        path: str,
        tokenizer: str,
        name: str | None = None,
        data_files: DataFiles = None,
        columns: Mapping[str, str] | None = None,
        splits: Mapping[str, str | None] | None = None,
        val_size: int = 500,
        test_size: int = 500,
        template: str = TEMPLATE,
        template_with_context: str = TEMPLATE_WITH_CONTEXT,
        max_prompt_length: int = 256,
        max_length: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(path, tokenizer, name, data_files, batch_size, num_workers)
        for key, text in (("template", template), ("template_with_context", template_with_context)):
            if "{instruction}" not in text:
                raise ValueError(f"{key} must contain {{instruction}}, got {text!r}")
        if not 0 < max_prompt_length < max_length:
            raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
        self.columns = {"instruction": "instruction", "context": "context", "response": "response"} | dict(columns or {})
        self.splits = {"train": "train", "val": None, "test": None} | dict(splits or {})
        self.val_size, self.test_size, self.seed = val_size, test_size, seed
        self.template, self.template_with_context = template, template_with_context
        self.max_prompt_length, self.max_length = max_prompt_length, max_length
        self.examples: dict[str, list[dict[str, list[int]]]] = {}
        self.texts: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        self.load_tokenizer()
        data = self.load()
        sources = {split: data[name] for split, name in self.splits.items() if name is not None}
        carved = [split for split in ("val", "test") if self.splits[split] is None]
        if carved:
            sizes = {"val": self.val_size, "test": self.test_size}
            held_out = sum(sizes[split] for split in carved)
            if held_out >= len(sources["train"]):
                raise ValueError(f"cannot carve {held_out} held-out rows from a train split of {len(sources['train'])}")
            parts = sources["train"].train_test_split(test_size=held_out, seed=self.seed)
            sources["train"], start = parts["train"], 0
            for split in carved:
                sources[split] = parts["test"].select(range(start, start + sizes[split]))
                start += sizes[split]
        for split, rows in sources.items():
            self.examples[split], self.texts[split] = self._encode_split(split, rows)

    def prompt(self, instruction: str, context: str | None) -> str:
        """The templated prompt of one row."""
        if context and context.strip():
            return self.template_with_context.format(instruction=instruction, context=context)
        return self.template.format(instruction=instruction)

    def _encode_split(self, split: str, rows) -> tuple[list[dict[str, list[int]]], list[str]]:
        needed = [self.columns["instruction"], self.columns["response"]]
        missing = [column for column in needed if column not in rows.column_names]
        if missing:
            raise DataError(f"the {split} split of {self.path} has no column {', '.join(map(repr, missing))} "
                             f"(columns: {rows.column_names}); map yours with dataset.datamodule.columns")
        encode = self.encode
        examples, references = [], []
        for row in rows:
            response = row[self.columns["response"]]
            if not response or not response.strip():
                continue
            prompt = self.prompt(row[self.columns["instruction"]], row.get(self.columns["context"]))
            examples.append(encode_example(encode(prompt), encode(response), self.tokenizer.eos_token_id, self.max_prompt_length, self.max_length))
            references.append(response)
        if not examples:
            raise DataError(f"no row with a response in the {split} split of {self.path}")
        return examples, references

    def split_dataset(self, split: str) -> list[tuple[int, dict[str, list[int]]]]:
        return list(enumerate(self.examples[split]))

    def collate(self, items: list[tuple[int, dict[str, list[int]]]]) -> dict[str, torch.Tensor]:
        batch = collate_examples([example for _, example in items], self.pad_token_id)
        return batch | {"index": torch.tensor([index for index, _ in items])}

    def eval_prompts(self, split: str, n: int) -> dict[str, torch.Tensor]:
        examples = self.examples[split][: min(n, len(self.examples[split]))]
        return left_pad([example["prompt"] for example in examples], self.pad_token_id)

    def references(self, split: str, n: int) -> list[str]:
        return self.texts[split][: min(n, len(self.texts[split]))]
