"""The known-reward task's SFT stage: a small GPT-2 trained on the task's text, trained once and cached.

Like a teacher of the teacher zoo (`kdlab.teachers`), the SFT reference is keyed by a fingerprint
of everything that shapes it (task, architecture, recipe) and stored under
`<cache_dir>/pref_synthetic-<fingerprint>/` (`save_pretrained` layout, plus `metrics.json`), with a
file lock, so the jobs of a sweep over divergences share one reference — and the preference pairs
sampled from it — whoever trains it first.
"""

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.fingerprint import fingerprint
from kdlab.results import write_json_atomic
from kdlab.synthetic.task import KnownRewardTask
from kdlab.tokens import IGNORE_INDEX, mean_nll

log = logging.getLogger(__name__)


def prompt_and_response(task: KnownRewardTask, responses: torch.Tensor) -> dict[str, torch.Tensor]:
    """`[N, T]` responses -> the LM layout: `input_ids [N, 1+T]` (the prompt token first), `attention_mask`,
    `labels` (`IGNORE_INDEX` on the prompt)."""
    input_ids = torch.cat([torch.full((len(responses), 1), task.bos), responses], dim=1)
    labels = input_ids.clone()
    labels[:, 0] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def sft_policy(task: KnownRewardTask, model: dict[str, Any], recipe: dict[str, Any], cache_dir: str | None = None) -> GPT2LMHeadModel:
    """The SFT reference for `task`: GPT-2 with `model` (`n_layer`, `n_embd`, `n_head`) trained by
    `recipe` (`sequences`, `epochs`, `batch_size`, `lr`) on text from `task.sample_corpus`.

    From the cache when `cache_dir` holds it, else trained now (and cached when `cache_dir` is set).
    Training is seeded by `task.seed` and leaves torch's global random state untouched.
    """
    if cache_dir is None:
        return _train(task, model, recipe)
    key = fingerprint({"task": asdict(task), "model": dict(model), "recipe": dict(recipe)})
    entry = Path(cache_dir) / f"pref_synthetic-{key}"
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if (entry / "metrics.json").exists():
            log.info("SFT reference %s loaded from the cache: %s", key, entry)
            return GPT2LMHeadModel.from_pretrained(entry)
        log.info("SFT reference %s is not cached: training it", key)
        policy = _train(task, model, recipe)
        policy.save_pretrained(entry)
        write_json_atomic(entry / "metrics.json", {"fingerprint": key, "task": asdict(task), "model": dict(model), "recipe": dict(recipe)})
        return policy


def _train(task: KnownRewardTask, model: dict[str, Any], recipe: dict[str, Any]) -> GPT2LMHeadModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        config = GPT2Config(
            vocab_size=task.vocab_size + 1, n_positions=task.length + 1, bos_token_id=task.bos, eos_token_id=None,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **model,
        )
        policy = GPT2LMHeadModel(config)
        generator = torch.Generator().manual_seed(task.seed)
        corpus = prompt_and_response(task, task.sample_corpus(recipe["sequences"], generator))
        optimizer = torch.optim.AdamW(policy.parameters(), lr=recipe["lr"])
        policy.train()
        for _ in range(recipe["epochs"]):
            for rows in torch.randperm(len(corpus["input_ids"]), generator=generator).split(recipe["batch_size"]):
                logits = policy(input_ids=corpus["input_ids"][rows], attention_mask=corpus["attention_mask"][rows]).logits
                loss = mean_nll(logits, corpus["labels"][rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return policy.eval()
