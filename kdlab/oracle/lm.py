"""The oracle → teacher chain of the teacher-hacking protocol (Tiapkin et al. 2025, arXiv 2502.02671; docs/methods.md §7.9).

- The **oracle** p* is a small GPT-2 with random weights drawn from `seed` (standard deviation
  `init_std`), its logits divided by `temperature` (sharpened when < 1): a known, exactly computable
  ground-truth language. Token 0 starts every sequence; a sequence is 0, a prompt of
  `prompt_length` tokens and a response of `response_length` tokens, all sampled from p*.
- The **teacher** p_T is a GPT-2 trained by maximum likelihood on `sequences` oracle samples for
  `epochs` (AdamW, `lr`, `batch_size`): an imperfect proxy of p*. It is trained once per
  (oracle, teacher) spec and cached under `<cache_dir>/oracle_teacher-<fingerprint>/`
  (`save_pretrained` layout, file lock), so every run of a sweep distils from the same teacher.
- The **reference** p_ref of MiniPLM's difference sampling (docs/methods.md §7.7) is a GPT-2 fitted
  the same way to `sequences` fresh samples of the pre-training corpus' own distribution: oracle
  text of which a fraction `noise` has uniformly random responses (`corrupt`), cached as
  `<cache_dir>/oracle_reference-<fingerprint>/`.
- **Domains** (DDK, docs/methods.md §7.8): N oracles, one per domain, over one vocabulary and one
  sequence layout; domain i's sequences start with token i (its tag) instead of BOS. The domain
  teacher (`domain_teacher_lm`) is one GPT-2 fitted to `sequences` samples of every domain, cached as
  `<cache_dir>/oracle_domain_teacher-<fingerprint>/`.
"""

import logging
from collections.abc import Callable, Mapping
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


def sample_sequences(model: GPT2LMHeadModel, n: int, length: int, generator: torch.Generator | None = None, start: int = BOS) -> torch.Tensor:
    """`n` sequences `[n, length]` sampled from `model`, each starting with the token `start` (BOS)."""
    return continue_sequences(model, torch.full((n, 1), start), length - 1, generator)


def corrupt(sequences: torch.Tensor, fraction: float, start: int, vocab_size: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sequences', noisy [N] bool)`: round(fraction · N) rows drawn without replacement get uniformly
    random tokens from column `start` on (junk documents of a crawled corpus). `fraction` 0 draws nothing."""
    noisy = torch.zeros(len(sequences), dtype=torch.bool)
    if fraction == 0:
        return sequences, noisy
    if not 0 < fraction <= 1:
        raise ValueError(f"noise must be in [0, 1], got {fraction}")
    noisy[torch.randperm(len(sequences), generator=generator)[: round(fraction * len(sequences))]] = True
    sequences = sequences.clone()
    sequences[noisy, start:] = torch.randint(vocab_size, (int(noisy.sum()), sequences.shape[1] - start), generator=generator)
    return sequences, noisy


def _cached(kind: str, spec: dict[str, Any], cache_dir: str | None, build: Callable[[], GPT2LMHeadModel]) -> GPT2LMHeadModel:
    """`build()`, or the model cached under `<cache_dir>/oracle_<kind>-<fingerprint of spec>/` (file lock)."""
    if cache_dir is None:
        return build()
    key = fingerprint(spec)
    entry = Path(cache_dir) / f"oracle_{kind}-{key}"
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if (entry / "metrics.json").exists():
            return GPT2LMHeadModel.from_pretrained(entry).requires_grad_(False).eval()
        log.info("Oracle %s %s is not cached: training it", kind, key)
        model = build()
        model.save_pretrained(entry)
        write_json_atomic(entry / "metrics.json", {"fingerprint": key, **spec})
        return model


def teacher_lm(oracle: Mapping[str, Any], teacher: Mapping[str, Any], cache_dir: str | None = None) -> GPT2LMHeadModel:
    """The teacher p_T for `oracle` (see the module docstring): from the cache, or trained now."""
    oracle, teacher = _spec(oracle, ORACLE_KEYS, "oracle"), _spec(teacher, TEACHER_KEYS, "teacher")

    def build() -> GPT2LMHeadModel:
        generator = torch.Generator().manual_seed(oracle["seed"] + 1)
        corpus = sample_sequences(oracle_lm(oracle), teacher["sequences"], sequence_length(oracle), generator)
        return fit_lm(corpus, teacher, oracle["vocab_size"], generator, init_seed=oracle["seed"] + 2)

    return _cached("teacher", {"oracle": oracle, "teacher": teacher}, cache_dir, build)


def reference_lm(oracle: Mapping[str, Any], reference: Mapping[str, Any], noise: float = 0.0, cache_dir: str | None = None) -> GPT2LMHeadModel:
    """MiniPLM's reference p_ref for a corpus of `oracle` text with a fraction `noise` of junk responses
    (see the module docstring): fitted to its own fresh sample of that corpus (seeds oracle.seed + 5, + 6)."""
    oracle, reference = _spec(oracle, ORACLE_KEYS, "oracle"), _spec(reference, TEACHER_KEYS, "reference")

    def build() -> GPT2LMHeadModel:
        generator = torch.Generator().manual_seed(oracle["seed"] + 5)
        corpus = sample_sequences(oracle_lm(oracle), reference["sequences"], sequence_length(oracle), generator)
        corpus, _ = corrupt(corpus, noise, 1 + oracle["prompt_length"], oracle["vocab_size"], generator)
        return fit_lm(corpus, reference, oracle["vocab_size"], generator, init_seed=oracle["seed"] + 6)

    return _cached("reference", {"oracle": oracle, "reference": reference, "noise": noise}, cache_dir, build)


def domain_oracles(domains: Mapping[str, Mapping[str, Any]]) -> dict[str, GPT2LMHeadModel]:
    """One oracle per domain (name -> spec, in order; domain i's tag is token i). ValueError unless the
    domains share the vocabulary and the prompt and response lengths, with a tag for each."""
    specs = {name: _spec(spec, ORACLE_KEYS, f"domain {name!r} oracle") for name, spec in domains.items()}
    shapes = {(spec["vocab_size"], spec["prompt_length"], spec["response_length"]) for spec in specs.values()}
    if len(shapes) != 1 or len(specs) < 2 or len(specs) > next(iter(shapes))[0]:
        raise ValueError(f"domains need one vocab_size, prompt_length and response_length, and 2 <= N <= vocab_size domains; got {shapes} for {len(specs)}")
    return {name: oracle_lm(spec) for name, spec in specs.items()}


def domain_teacher_lm(domains: Mapping[str, Mapping[str, Any]], teacher: Mapping[str, Any], cache_dir: str | None = None) -> GPT2LMHeadModel:
    """The teacher of a domain mixture (see the module docstring): `teacher.sequences` samples of each
    domain's oracle, tagged, pooled; seeds from the first domain's seed (+1 corpus and order, +2 init)."""
    teacher = _spec(teacher, TEACHER_KEYS, "teacher")
    specs = {name: _spec(spec, ORACLE_KEYS, f"domain {name!r} oracle") for name, spec in domains.items()}

    def build() -> GPT2LMHeadModel:
        first = next(iter(specs.values()))
        generator = torch.Generator().manual_seed(first["seed"] + 1)
        corpus = torch.cat([sample_sequences(oracle, teacher["sequences"], sequence_length(first), generator, start=tag)
                            for tag, oracle in enumerate(domain_oracles(specs).values())])
        return fit_lm(corpus, teacher, first["vocab_size"], generator, init_seed=first["seed"] + 2)

    return _cached("domain_teacher", {"domains": list(specs.items()), "teacher": teacher}, cache_dir, build)  # ordered: tags follow the order


def fit_lm(corpus: torch.Tensor, spec: Mapping[str, Any], vocab_size: int, generator: torch.Generator, init_seed: int) -> GPT2LMHeadModel:
    """A GPT-2 of `spec`'s size (`n_layer`, `n_embd`, `n_head`) initialised from `init_seed` and fitted
    by maximum likelihood to `corpus [N, L]` (every token but the first is scored): `epochs` passes in
    `generator`-shuffled batches of `batch_size`, AdamW at `lr`. Frozen, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = gpt2(vocab_size, corpus.shape[1], spec["n_layer"], spec["n_embd"], spec["n_head"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"])
        labels = corpus.clone()
        labels[:, 0] = IGNORE_INDEX
        model.train()
        for _ in range(spec["epochs"]):
            for rows in torch.randperm(len(corpus), generator=generator).split(spec["batch_size"]):
                loss = mean_nll(model(input_ids=corpus[rows]).logits, labels[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model.requires_grad_(False).eval()
