"""Prompt + response text in the layout of kdlab's LM regimes (distillation, SFT, preference pairs).

One example is a token-id prompt and a token-id response; `encode_example` builds it (prompt cut
from the left, response cut to fit, EOS appended), `collate_examples` batches examples as

- `input_ids, attention_mask [B, L]`: prompt + response, right-padded;
- `labels [B, L]`: the response ids, -100 on prompt and padding (the loss reads response tokens only;
  with the causal shift, logits at t predict `labels[t+1]`);
- `prompt_ids, prompt_mask [B, P]`: the prompts alone, left-padded, ready for `generate`;

and `left_pad` pads prompts for generation. Preference pairs are two examples that share a prompt.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

IGNORE_INDEX = -100
Encode = Callable[[str], list[int]]


def plain(value: Any) -> Any:
    """A Hydra config value as plain Python (dicts, lists): `datasets.load_dataset(data_files=...)`
    reads a `DictConfig` of split -> file as a list of file names."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def encoder(tokenizer) -> Encode:
    """`text -> ids` without special tokens (templates carry their own structure)."""
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


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
