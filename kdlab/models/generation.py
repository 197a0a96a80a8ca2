"""Sampling responses from a causal LM, in the layout kdlab's LM losses read: the one sampler every
regime uses (preference evaluation, LM distillation sources, the on-policy regime).

`sample_responses` draws `y ~ π(·|x)` — or, with `mix=(teacher, α)`, from the per-token mixture
`(1 − α) π + α p` of MiniLLM's teacher-mixed sampling — batched, with each model's KV cache,
under `torch.inference_mode`, and returns the log-probability of every drawn token under the
distribution it was drawn from (what importance weights and policy-gradient ratios need).
"""

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from kdlab.models.hf import position_ids
from kdlab.tokens import IGNORE_INDEX


def sample_responses(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    temperature: float = 1.0,
    mix: tuple[nn.Module, float] | None = None,
    vocab_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Ancestral samples, one per prompt row: at each step the next token is drawn from
    `softmax(logits / temperature)` of `model` (1: no top-k/top-p truncation, so the samples follow the
    model's own distribution, as unbiased estimates need) — or, with `mix=(other, α)`, from
    `(1 − α) softmax(z_model / T) + α softmax(z_other / T)`, both models run on the same prefix.

    Prompts are left-padded `[N, P]` with `prompt_mask` 1 on real tokens. Generation stops at
    `eos_token_id` (kept as the response's last token) or after `max_new_tokens`. Returns
    `input_ids, attention_mask [N, P+T]` (prompt + response, padding masked), `labels [N, P+T]`
    (`IGNORE_INDEX` on prompt and padding: the layout of `kdlab.tokens.token_logps`), `responses
    [N, T]` (the response tokens, `pad_token_id` after the end), `response_mask [N, T]` and
    `sampling_logps [N, P+T-1]`: log-probability of each scored token under the distribution it was
    drawn from, aligned with `token_logps` (0 where not scored). The draws use torch's global RNG
    exactly as `transformers`' `generate(do_sample=True)` does (one `multinomial` per step), so with
    no mixture the tokens equal `generate`'s for the same seed. A model that can end its responses
    needs `pad_token_id` beside `eos_token_id`. `vocab_size`: only the first `vocab_size` logits are
    sampled from (models whose output rows exceed the tokenizer's, e.g. a padded teacher in a mixture).
    """
    if eos_token_id is not None and pad_token_id is None:
        raise ValueError("sampling responses that can end at eos_token_id needs a pad_token_id for the rows that end early")
    if temperature <= 0 or max_new_tokens < 1:
        raise ValueError(f"sampling needs temperature > 0 and max_new_tokens >= 1, got {temperature}, {max_new_tokens}")
    models, weights = [model], [1.0]
    if mix is not None:
        other, alpha = mix
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"the mixture weight must be in [0, 1], got {alpha}")
        models, weights = [model, other], [1.0 - alpha, alpha]
    with torch.inference_mode():
        responses, logps = _draw(models, weights, prompt_ids, prompt_mask, max_new_tokens, eos_token_id, pad_token_id, temperature, vocab_size)
    responses, logps = responses.clone(), logps.clone()  # ordinary tensors: autograd may save them later
    response_mask = torch.ones_like(responses, dtype=torch.bool)
    if eos_token_id is not None:  # everything after the first EOS is padding
        ended = (responses == eos_token_id).long().cumsum(-1)
        response_mask = (ended == 0) | ((ended == 1) & (responses == eos_token_id))
        responses = responses.masked_fill(~response_mask, pad_token_id)
    attention_mask = torch.cat([prompt_mask.bool(), response_mask], dim=1)
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), responses.masked_fill(~response_mask, IGNORE_INDEX)], dim=1)
    sampling_logps = torch.cat([torch.zeros_like(prompt_ids[:, 1:], dtype=logps.dtype), logps.masked_fill(~response_mask, 0.0)], dim=1)
    return {
        "input_ids": torch.cat([prompt_ids, responses], dim=1),
        "attention_mask": attention_mask.long(),
        "labels": labels,
        "responses": responses,
        "response_mask": response_mask,
        "sampling_logps": sampling_logps,
    }


def _draw(
    models: Sequence[nn.Module],
    weights: Sequence[float],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int | None,
    temperature: float,
    vocab_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoding loop: `(tokens [N, T], log-probs of the drawn tokens under the sampled mixture [N, T])`."""
    drawn = [(model, weight) for model, weight in zip(models, weights) if weight > 0.0]  # a zero weight needs no forward pass
    attention = prompt_mask.long()
    inputs, positions = prompt_ids, position_ids(attention)
    caches: list = [None] * len(drawn)
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=prompt_ids.device)
    tokens, logps = [], []
    for _ in range(max_new_tokens):
        scores = []
        for index, (model, weight) in enumerate(drawn):
            out = model(input_ids=inputs, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1,
                        **{_cache_argument(model): caches[index]})
            caches[index] = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
            scores.append(out.logits[:, -1, :vocab_size].float() / temperature)
        if len(drawn) == 1:  # `generate`'s own arithmetic: softmax of the scores, then one multinomial draw
            probs, log_probs = scores[0].softmax(-1), scores[0].log_softmax(-1)
        else:
            log_probs = torch.stack([s.log_softmax(-1) + torch.tensor(w).log() for s, (_, w) in zip(scores, drawn)]).logsumexp(0)
            probs = log_probs.exp()
        next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
        logps.append(log_probs.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1))
        if pad_token_id is not None:
            next_tokens = next_tokens.masked_fill(finished, pad_token_id)
        tokens.append(next_tokens)
        if eos_token_id is not None:
            finished = finished | (next_tokens == eos_token_id)
            if finished.all():
                break
        inputs = next_tokens.unsqueeze(-1)
        attention = torch.cat([attention, attention.new_ones(len(attention), 1)], dim=1)
        positions = positions[:, -1:] + 1
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


def _cache_argument(model: nn.Module) -> str:
    """The keyword a Hugging Face model takes its KV cache by: `cache` (transformers >= 5.2x) or `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
