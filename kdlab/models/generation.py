"""Sampling responses from a causal LM, in the layout kdlab's LM losses read."""

import torch
from torch import nn
from transformers import GenerationConfig

from kdlab.tokens import IGNORE_INDEX


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Ancestral samples `y ~ π(·|x)` at `temperature` (1: no top-k/top-p truncation, so the samples
    follow the model's own distribution, as unbiased KL estimates need), one per prompt row.

    Prompts are left-padded `[N, P]` with `prompt_mask` 1 on real tokens. Generation stops at
    `eos_token_id` (kept as the response's last token) or after `max_new_tokens`. Returns:
    `input_ids, attention_mask [N, P+T]` (prompt + response, padding masked), `labels [N, P+T]`
    (`IGNORE_INDEX` on prompt and padding: the layout of `kdlab.tokens.token_logps`), and
    `responses [N, T]` (the response tokens, `pad_token_id` after the end). Uses torch's global RNG.
    A model that can end its responses needs `pad_token_id` beside `eos_token_id`.
    """
    if eos_token_id is not None and pad_token_id is None:
        raise ValueError("sampling responses that can end at eos_token_id needs a pad_token_id for the rows that end early")
    config = GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )
    sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    responses = sequences[:, prompt_ids.shape[1] :]
    response_mask = torch.ones_like(responses, dtype=torch.bool)
    if eos_token_id is not None:  # everything after the first EOS is padding
        ended = (responses == eos_token_id).long().cumsum(-1)
        response_mask = (ended == 0) | ((ended == 1) & (responses == eos_token_id))
        responses = responses.masked_fill(~response_mask, pad_token_id)
    attention_mask = torch.cat([prompt_mask.bool(), response_mask], dim=1)
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), responses.masked_fill(~response_mask, IGNORE_INDEX)], dim=1)
    return {
        "input_ids": torch.cat([prompt_ids, responses], dim=1),
        "attention_mask": attention_mask.long(),
        "labels": labels,
        "responses": responses,
    }
