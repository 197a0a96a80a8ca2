"""Text from Hugging Face `datasets` in the layout of kdlab's LM regimes (distillation, SFT,
preference pairs), and the datamodule base every text dataset shares (`TextDataModule`).

One example is a token-id prompt and a token-id response; `encode_example` builds it (prompt cut
from the left, response cut to fit, EOS appended), `collate_examples` batches examples as

- `input_ids, attention_mask [B, L]`: prompt + response, right-padded;
- `labels [B, L]`: the response ids, `IGNORE_INDEX` on prompt and padding (the loss reads response
  tokens only; with the causal shift, logits at t predict `labels[t+1]`);
- `prompt_ids, prompt_mask [B, P]`: the prompts alone, left-padded, ready for `generate`;

and `left_pad` pads prompts for generation. Preference pairs are two examples that share a prompt.
"""

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from kdlab.data.splits import SplitDataModule
from kdlab.errors import DataError
from kdlab.models.hf import load_tokenizer
from kdlab.tokens import IGNORE_INDEX

DataFiles = str | list[str] | dict[str, str | list[str]] | None  # `datasets.load_dataset(data_files=...)`: split -> file(s)


def local_files(data_files: DataFiles) -> list[str]:
    """The local paths (or glob patterns) among `data_files`; hub URLs (`hf://`, `https://`) left out."""
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [] if "://" in data_files else [data_files]
    values = data_files.values() if isinstance(data_files, dict) else data_files
    return [file for value in values for file in local_files(value)]


def root_cause(error: BaseException) -> str:
    """The first line of the innermost error `error` was raised from."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def row_location(data_files: DataFiles, split: str, number: int) -> str:
    """Where row `number` (from 0) of `split` is: "FILE line N" when the split is one JSON-lines file, "FILE row N"
    (the header not counted) when it is one file of another format, else "the SPLIT split, row N"."""
    files = data_files.get(split) if isinstance(data_files, dict) else data_files if split == "train" else None
    if not isinstance(files, str):
        return f"the {split} split, row {number + 1}"
    return f"{files} {'line' if files.endswith(('.jsonl', '.json')) else 'row'} {number + 1}"


def first_missing(data, columns: Sequence[str], data_files: DataFiles) -> str | None:
    """Where the first row of `data` (a `datasets.DatasetDict`, as loaded) without a text in one of
    `columns` is: "FILE line N: no 'COLUMN' text" (or "the SPLIT split, row N: ..."); None when every row has them."""
    for split, rows in data.items():
        for column in columns:
            if column not in rows.column_names:
                continue
            for number, value in enumerate(rows[column]):
                if not isinstance(value, str):
                    return f"{row_location(data_files, split, number)}: no {column!r} text (it has {value!r})"
    return None


def plain(value: Any) -> Any:
    """A Hydra config value as plain Python (dicts, lists): `datasets.load_dataset(data_files=...)`
    reads a `DictConfig` of split -> file as a list of file names."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def encode_example(
    prompt_ids: list[int], response_ids: list[int], eos_token_id: int | None, max_prompt_length: int, max_length: int
) -> dict[str, list[int]]:
    """`{"prompt", "response"}` ids: the prompt's last `max_prompt_length` tokens, then the response
    (+ EOS when not None) cut so that prompt + response ≤ `max_length`."""
    if not 0 < max_prompt_length < max_length:
        raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
    prompt = prompt_ids[-max_prompt_length:]
    response = response_ids + ([eos_token_id] if eos_token_id is not None else [])
    return {"prompt": prompt, "response": response[: max_length - len(prompt)]}


def left_pad(prompts: Sequence[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`prompt_ids, prompt_mask [N, P]`, left-padded (the layout `generate` continues)."""
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), pad_token_id)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, length - len(prompt) :] = torch.tensor(prompt)
            mask[row, length - len(prompt) :] = 1
    return {"prompt_ids": ids, "prompt_mask": mask}


def collate_examples(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch `{"prompt", "response"}` examples (see the module docstring for the layout)."""
    length = max(len(e["prompt"]) + len(e["response"]) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id)
    labels = torch.full((len(examples), length), IGNORE_INDEX)
    attention_mask = torch.zeros(len(examples), length, dtype=torch.long)
    for row, example in enumerate(examples):
        start, end = len(example["prompt"]), len(example["prompt"]) + len(example["response"])
        input_ids[row, :end] = torch.tensor(example["prompt"] + example["response"])
        labels[row, start:end] = torch.tensor(example["response"])
        attention_mask[row, :end] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            **left_pad([e["prompt"] for e in examples], pad_token_id)}


def tokenizer_at(name_or_path: str, key: str):
    """`load_tokenizer(name_or_path)`; a local path that does not hold a tokenizer is a `DataError` naming `key`."""
    try:
        return load_tokenizer(name_or_path)
    except OSError as error:
        raise DataError(f"{key}={name_or_path} cannot be loaded ({root_cause(error)}): "
                        "give the directory of a saved tokenizer (a model's directory), or a hub name") from error


class TextDataModule(SplitDataModule):
    """A datamodule over `datasets.load_dataset(path, name, data_files=...)` — a hub dataset, or local
    `json`/`parquet`/`csv` files — tokenised with `tokenizer` (hub name or directory, loaded in
    `setup` by `load_tokenizer`: without a pad token, EOS pads). Subclasses encode the rows."""

    def __init__(
        self,
        path: str,
        tokenizer: str,
        name: str | None,
        data_files: DataFiles,
        batch_size: int,
        num_workers: int,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.path, self.name, self.data_files, self.tokenizer_name = path, name, plain(data_files), tokenizer
        self.tokenizer = None

    def load(self):
        """The dataset's splits (`datasets.DatasetDict`). Local `data_files` that are missing, empty or
        unreadable are a `DataError` naming the file."""
        import datasets  # imported here: building the data module stays cheap

        for file in local_files(self.data_files):
            if not any(glob.glob(file)):
                raise DataError(f"dataset.datamodule.data_files: {file} does not exist; give the path of your file")
            if not glob.has_magic(file) and Path(file).stat().st_size == 0:
                raise DataError(f"dataset.datamodule.data_files: {file} is empty; give a file with one row per line")
        try:
            return datasets.load_dataset(self.path, self.name, data_files=self.data_files)
        except datasets.exceptions.DatasetGenerationError as error:
            raise DataError(f"dataset.datamodule.data_files: {self.data_files} cannot be read as {self.path} ({root_cause(error)}); "
                            "every file needs the same columns, and a json file one object per line") from error
        except ValueError as error:  # `datasets`: a split of no rows (a csv of a header only) "corresponds to no data"
            if "corresponds to no data" not in str(error):
                raise
            raise DataError(f"dataset.datamodule.data_files: {self.data_files} has a split of no rows: give one example per row") from error

    def load_tokenizer(self) -> None:
        """`self.tokenizer`, loaded (`tokenizer_at`)."""
        self.tokenizer = tokenizer_at(self.tokenizer_name, "dataset.datamodule.tokenizer")

    def prepare_data(self) -> None:
        self.load()  # download once (process 0); `setup` then reads the local cache

    def encode(self, text: str) -> list[int]:
        """`text -> ids` without special tokens (templates carry their own structure)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
