"""Hugging Face models for kdlab: causal LMs (teachers, students, policies, references) and
sequence classifiers (GLUE encoders), loaded by hub name or local path, plus the pieces every LM
regime shares — tokenizers, the vocabulary check, and forward passes that respect padding.

Loaders are plain functions that a config names with `_target_` (they load eagerly: building a
model preset means loading its weights, so `tests/test_configs.py` only checks their arguments):

- `causal_lm(name_or_path, dtype=None, ...)`: `AutoModelForCausalLM.from_pretrained`;
- `causal_lm_from_config(model_type="gpt2", **config)`: a randomly initialised causal LM (seeded by
  the run), e.g. the students of the oracle experiment;
- `sequence_classifier(name_or_path, num_labels, num_hidden_layers=None, ...)`: a `[B, C]`-logit
  classifier for kdlab's classification regimes (`SequenceClassifier`).
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config attributes of architectures whose logits are not `lm_head(hidden)`: the fused loss cannot recompute them.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def _dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} or null, got {dtype!r}")
    return DTYPES[dtype]


def causal_lm(name_or_path: str, dtype: str | None = None, revision: str | None = None, attn_implementation: str | None = None) -> PreTrainedModel:
    """A pretrained causal LM (`AutoModelForCausalLM.from_pretrained`), by hub name or local directory.

    `dtype`: "float32", "bfloat16", "float16" or None (the checkpoint's own). Frozen teachers in bf16
    halve their memory; losses upcast logits to fp32 (METHODS §0.4).
    """
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=_dtype(dtype), **kwargs)


def causal_lm_from_config(model_type: str = "gpt2", **config: Any) -> PreTrainedModel:
    """A randomly initialised causal LM of `model_type` with the given config values
    (e.g. `vocab_size`, `n_positions`, `n_layer`, `n_embd`, `n_head` for GPT-2); the run's seed
    (set before models are built) makes the initialisation repeatable."""
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))


class SequenceClassifier(nn.Module):
    """A Hugging Face sequence classifier with kdlab's classifier interface: `forward(inputs) -> [B, C]`.

    `inputs` is the tokenised batch dict (`input_ids`, `attention_mask`, `token_type_ids`) that
    `kdlab.data.glue` puts under `batch["input"]`. Attributes `num_classes`, `name_or_path`.
    Intermediate features are not exposed (`return_features` is not accepted), so feature-based
    objectives refuse it before training.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.num_classes = model.config.num_labels
        self.name_or_path = model.name_or_path

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**inputs).logits


def sequence_classifier(
    name_or_path: str, num_labels: int, num_hidden_layers: int | None = None, dtype: str | None = None, revision: str | None = None
) -> SequenceClassifier:
    """A `num_labels`-way classifier on a pretrained encoder (`AutoModelForSequenceClassification`).

    `num_hidden_layers=k` keeps the encoder's first k layers with their pretrained weights (the
    remaining layers' weights are not loaded) — the PKD-style 6-layer student of SinKD/PKD from
    `bert-base-uncased`. The classification head is newly initialised (seeded by the run) unless the
    checkpoint is already a classifier with `num_labels` labels.
    """
    kwargs: dict[str, Any] = {"num_labels": num_labels}
    if num_hidden_layers is not None:
        kwargs["num_hidden_layers"] = num_hidden_layers
    if revision:
        kwargs["revision"] = revision
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=_dtype(dtype), **kwargs)
    return SequenceClassifier(model)


def load_tokenizer(name_or_path: str):
    """The tokenizer saved with a model (hub name or directory); a tokenizer without a pad token pads with EOS."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding: `cumsum(mask) - 1`, 0 on padding. With left-padded prompts (as
    `generate` produces) absolute-position models (GPT-2) then see each sequence from position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def lm_forward(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits `[B, L, V]` of a causal LM, with padding-aware positions (`position_ids`)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False).logits


def lm_hidden(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states `[B, L, H]` of a causal LM (after its last norm), without computing logits:
    `lm_head(lm_hidden(...)) == lm_forward(...)` for the architectures `check_fusable` accepts."""
    outputs = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False)
    return outputs.last_hidden_state


def check_fusable(model: PreTrainedModel, role: str) -> None:
    """ValueError unless the model's logits are exactly `get_output_embeddings()(last hidden state)`."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"the {role} ({type(model).__name__}) has no linear LM head: use the unfused loss (objective.fused=false)")
    transforms = [name for name in LOGIT_TRANSFORMS if getattr(model.config, name, None) not in (None, 1, 1.0)]
    if transforms:
        raise ValueError(f"the {role} transforms its logits after the LM head ({', '.join(transforms)}): use objective.fused=false")


def output_rows(model: nn.Module) -> int:
    """How many logits a causal LM produces per position (its LM head's rows; may exceed the tokenizer's size)."""
    return model.get_output_embeddings().weight.shape[0]


def check_same_vocabulary(tokenizers: Mapping[str, Any]) -> None:
    """ValueError unless every tokenizer maps the same ids to the same tokens (and agrees on EOS),
    naming the first differing token ids. `tokenizers`: role -> tokenizer (e.g. data, student, teacher)."""
    (first_role, first), *others = tokenizers.items()
    reference = _id_to_token(first)
    for role, tokenizer in others:
        tokens = _id_to_token(tokenizer)
        differing = [i for i in range(max(len(reference), len(tokens))) if reference.get(i) != tokens.get(i)]
        if differing:
            shown = "; ".join(f"id {i}: {reference.get(i)!r} vs {tokens.get(i)!r}" for i in differing[:3])
            raise ValueError(
                f"the {first_role} and {role} tokenizers differ ({len(reference)} vs {len(tokens)} tokens, {len(differing)} ids differ; "
                f"first differing token ids ({first_role} vs {role}): {shown}). Token-level distillation compares distributions over "
                "one vocabulary: pick a teacher and student that share the tokenizer."
            )
        if tokenizer.eos_token_id != first.eos_token_id:
            raise ValueError(f"the {first_role} and {role} tokenizers end sequences differently: EOS id {first.eos_token_id} vs {tokenizer.eos_token_id}")


def _id_to_token(tokenizer: Any) -> dict[int, str]:
    return {index: token for token, index in tokenizer.get_vocab().items()}
