"""The oracle → teacher chain of the teacher-hacking protocol (Tiapkin et al. 2025, arXiv 2502.02671; docs/methods.md §7.9).

- The **oracle** p* is a small GPT-2 with random weights drawn from `seed` (standard deviation
  `init_std`), its logits divided by `temperature` (sharpened when < 1): a known, exactly computable
  ground-truth language. Token 0 starts every sequence; a sequence is 0, a prompt of
  `prompt_length` tokens and a response of `response_length` tokens, all sampled from p*.
- The **teacher** p_T is a GPT-2 trained by maximum likelihood on `sequences` oracle samples for
  `epochs` (AdamW, `lr`, `batch_size`): an imperfect proxy of p*. It is trained once per
  (oracle, teacher) spec and cached under `<cache_dir>/oracle_teacher-<fingerprint>/`
  (`save_pretrained` layout, file lock), so every run of a sweep distils from the same teacher.
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.fingerprint import fingerprint
from kdlab.results import write_json_atomic
from kdlab.tokens import IGNORE_INDEX, mean_nll

log = logging.getLogger(__name__)
BOS = 0
ORACLE_KEYS = ("vocab_size", "prompt_length", "response_length", "n_layer", "n_embd", "n_head", "init_std", "temperature", "seed")
TEACHER_KEYS = ("n_layer", "n_embd", "n_head", "sequences", "epochs", "batch_size", "lr")


def _spec(spec: Mapping[str, Any], keys: tuple[str, ...], what: str) -> dict[str, Any]:
    spec = dict(spec)
    if set(spec) != set(keys):
        raise ValueError(f"the {what} spec needs exactly the keys {', '.join(keys)}; got {', '.join(sorted(spec))}")
    return spec


def sequence_length(oracle: Mapping[str, Any]) -> int:
    return 1 + oracle["prompt_length"] + oracle["response_length"]


def gpt2(vocab_size: int, n_positions: int, n_layer: int, n_embd: int, n_head: int, **config: Any) -> GPT2LMHeadModel:
    """A GPT-2 for the oracle's language, without dropout (every distribution here is exact)."""
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                      bos_token_id=BOS, eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config))


def oracle_lm(oracle: Mapping[str, Any]) -> GPT2LMHeadModel:
    """The oracle p* (see the module docstring); deterministic in the spec, global RNG untouched."""
    spec = _spec(oracle, ORACLE_KEYS, "oracle")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        model = gpt2(spec["vocab_size"], sequence_length(spec), spec["n_layer"], spec["n_embd"], spec["n_head"],
                     initializer_range=spec["init_std"], tie_word_embeddings=False)
    with torch.no_grad():  # softmax(h W^T / τ) = softmax(h (W/τ)^T): the sharpened oracle is itself a GPT-2
        model.lm_head.weight.div_(spec["temperature"])
    return model.requires_grad_(False).eval()


@torch.no_grad()
def continue_sequences(model: GPT2LMHeadModel, prefixes: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                       batch_size: int = 512) -> torch.Tensor:
    """`prefixes [N, k]` followed by `steps` ancestral samples at T=1 (`generator`, else torch's global RNG)."""
    rows = []
    for ids in prefixes.split(batch_size):
        for _ in range(steps):
            logits = model(input_ids=ids).logits[:, -1].float()
            ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1, generator=generator)], dim=1)
        rows.append(ids)
    return torch.cat(rows)


def sample_sequences(model: GPT2LMHeadModel, n: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`n` sequences `[n, length]` sampled from `model`, each starting with BOS."""
    return continue_sequences(model, torch.full((n, 1), BOS), length - 1, generator)


def teacher_lm(oracle: Mapping[str, Any], teacher: Mapping[str, Any], cache_dir: str | None = None) -> GPT2LMHeadModel:
    """The teacher p_T for `oracle` (see the module docstring): from the cache, or trained now."""
    oracle, teacher = _spec(oracle, ORACLE_KEYS, "oracle"), _spec(teacher, TEACHER_KEYS, "teacher")
    if cache_dir is None:
        return _train_teacher(oracle, teacher)
    key = fingerprint({"oracle": oracle, "teacher": teacher})
    entry = Path(cache_dir) / f"oracle_teacher-{key}"
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if (entry / "metrics.json").exists():
            return GPT2LMHeadModel.from_pretrained(entry).requires_grad_(False).eval()
        log.info("Oracle teacher %s is not cached: training it", key)
        model = _train_teacher(oracle, teacher)
        model.save_pretrained(entry)
        write_json_atomic(entry / "metrics.json", {"fingerprint": key, "oracle": oracle, "teacher": teacher})
        return model


def _train_teacher(oracle: dict[str, Any], teacher: dict[str, Any]) -> GPT2LMHeadModel:
    length = sequence_length(oracle)
    generator = torch.Generator().manual_seed(oracle["seed"] + 1)
    corpus = sample_sequences(oracle_lm(oracle), teacher["sequences"], length, generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(oracle["seed"] + 2)
        model = gpt2(oracle["vocab_size"], length, teacher["n_layer"], teacher["n_embd"], teacher["n_head"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=teacher["lr"])
        labels = corpus.clone()
        labels[:, 0] = IGNORE_INDEX
        model.train()
        for _ in range(teacher["epochs"]):
            for rows in torch.randperm(len(corpus), generator=generator).split(teacher["batch_size"]):
                loss = mean_nll(model(input_ids=corpus[rows]).logits, labels[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model.requires_grad_(False).eval()
