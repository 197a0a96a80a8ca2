"""The synthetic tasks' SFT stage: a small GPT-2 trained on the task's text, trained once and cached.

Like a teacher of the teacher zoo (`kdlab.teachers`), the SFT reference is keyed by a fingerprint
of everything that shapes it (task, architecture, recipe) and stored under
`<cache_dir>/<task.cache_name>-<fingerprint>/` (`save_pretrained` layout, plus `metrics.json`), with
a file lock, so the jobs of a sweep over divergences share one reference — and the data sampled
from it — whoever trains it first. A task (`KnownRewardTask`, `ArithmeticTask`) provides
`token_count`, `sequence_length`, `sft_corpus(n, generator)` and its `cache_name`.
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
from kdlab.synthetic.arithmetic import ArithmeticTask
from kdlab.synthetic.task import KnownRewardTask
from kdlab.tokens import mean_nll

log = logging.getLogger(__name__)
Task = KnownRewardTask | ArithmeticTask


def prompt_and_response(task: KnownRewardTask, responses: torch.Tensor) -> dict[str, torch.Tensor]:
    """`[N, T]` responses of the known-reward task -> the LM layout (`KnownRewardTask.sequences`)."""
    return task.sequences(responses)


def sft_policy(task: Task, model: dict[str, Any], recipe: dict[str, Any], cache_dir: str | None = None) -> GPT2LMHeadModel:
    """The SFT reference for `task`: GPT-2 with `model` (`n_layer`, `n_embd`, `n_head`) trained by
    `recipe` (`sequences`, `epochs`, `batch_size`, `lr`) on `task.sft_corpus`.

    From the cache when `cache_dir` holds it, else trained now (and cached when `cache_dir` is set).
    Training is seeded by `task.seed` and leaves torch's global random state untouched.
    """
    if cache_dir is None:
        return _train(task, model, recipe)
    key = fingerprint({"task": asdict(task), "model": dict(model), "recipe": dict(recipe)})
    entry = Path(cache_dir) / f"{task.cache_name}-{key}"
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


def _train(task: Task, model: dict[str, Any], recipe: dict[str, Any]) -> GPT2LMHeadModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        config = GPT2Config(
            vocab_size=task.token_count, n_positions=task.sequence_length, bos_token_id=getattr(task, "bos", None), eos_token_id=None,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **model,
        )
        policy = GPT2LMHeadModel(config)
        generator = torch.Generator().manual_seed(task.seed)
        corpus = task.sft_corpus(recipe["sequences"], generator)
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
