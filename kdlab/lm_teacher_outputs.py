"""The LM teacher-output cache: the teacher's top-k log-probabilities of every training response token,
computed once and reused by every epoch and every job that shares the teacher and the data.

With `module.teacher_top_k=K` (lm_distill regime; null: the teacher runs every step), fitting starts by
reading (or building) the entry `<module.teacher_outputs_dir>/lm-outputs-<key>/` (default `paths.teacher_dir`) (`kdlab.cache`: built once
under a lock, however many jobs ask, each file checked by SHA-256 before use), where `key` is the
fingerprint of

- the teacher: the SHA-256 of its weights (names, dtypes, shapes and bytes of its state dict), so a
  hub name or a directory whose files changed is another teacher;
- the data: the SHA-256 of the training split as tokenised (every example's `input_ids` and `labels`,
  by index), which covers the text, the tokenizer, the template and the length limits;
- `top_k`, the temperature T of the objective (the log-probabilities are stored at T: they are the
  teacher's `log softmax(z_t / T)`), the vocabulary size and the format version.

The entry holds `outputs.safetensors`: for the T_total response tokens of the training split, example
after example in index order and position order, `ids [T_total, k]` int32 (the top-k tokens),
`logps [T_total, k]` float32 (their log-probabilities), `tail [T_total]` float32 (the log of the
remaining mass, `kdlab.objectives.tail_bin`), and `offsets [N + 1]` int64 (example i's tokens are rows
`offsets[i]:offsets[i+1]`); and `info.json` (what was built: teacher and data fingerprints, k, T, token
count). Training batches look their rows up by the `index` every text batch carries.

Only the dataset's own responses can be cached: sampled (on-policy) responses are new at every step,
and `check_config` refuses them before anything is built, with the other settings the cache cannot serve.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from kdlab.cache import load_or_build
from kdlab.errors import ConfigError, DataError
from kdlab.fingerprint import fingerprint, weights_fingerprint
from kdlab.models.hf import lm_forward
from kdlab.objectives.tail_bin import top_k_log_probs
from kdlab.tokens import scored

log = logging.getLogger(__name__)

FORMAT = 1
OUTPUTS_FILE = "outputs.safetensors"
INFO_FILE = "info.json"
SETTING = "module.teacher_top_k"
OFFLINE_SOURCE = "kdlab.modules.lm_sources.DatasetResponses"


def check_config(config: dict[str, Any]) -> None:
    """`ConfigError` (one line) when `module.teacher_top_k` is set but cannot be served: k < 1, responses
    sampled during training, a fused objective, a batch-level divergence, or fresh data every batch.
    (k above the vocabulary is refused when the tokenizer is loaded, `TeacherOutputs.check_vocabulary`.)"""
    module = config.get("module", {})
    k = module.get("teacher_top_k")
    if k is None:
        return
    if k < 1:
        raise ConfigError(f"{SETTING}={k} must be >= 1 (the teacher's tokens kept per position), or null to run the teacher every step")
    source = module.get("source", {}).get("_target_")
    if source != OFFLINE_SOURCE:
        raise ConfigError(f"{SETTING}={k} caches the teacher on the dataset's responses, but module.source={source} samples new "
                          f"responses during training: drop {SETTING}, or use +method=lmkd|abkd_lm (the dataset's responses)")
    if config.get("objective", {}).get("fused"):
        raise ConfigError(f"{SETTING}={k} replaces the teacher's hidden states by its cached top-k: set objective.fused=false")
    from kdlab.divergences import REGISTRY, canonical

    name = config.get("divergence", {}).get("name")
    if name is not None and REGISTRY[canonical(name)].batch_level:
        raise ConfigError(f"{SETTING}={k}: divergence={name} couples the positions of a batch over the whole vocabulary and "
                          "cannot use the top-k tail bin; pick a per-token divergence or drop " + SETTING)
    if config.get("dataset", {}).get("datamodule", {}).get("online"):
        raise ConfigError(f"{SETTING}={k}: dataset={config['dataset'].get('name')} draws fresh sequences every batch, nothing "
                          "to cache; use the offline corpus (dataset.datamodule.online=false) or drop " + SETTING)


def check_vocabulary(k: int, vocab_size: int) -> None:
    """`ConfigError` unless 1 <= k <= the data's vocabulary size."""
    if k > vocab_size:
        raise ConfigError(f"{SETTING}={k} is larger than the vocabulary ({vocab_size} tokens): set {SETTING} <= {vocab_size}")


def data_fingerprint(batches: list[dict[str, Tensor]]) -> str:
    """The SHA-256 (16 hex digits) of every example's `index`, `input_ids` and `labels` (unpadded)."""
    digest = hashlib.sha256()
    for batch in batches:
        for index, ids, labels, mask in zip(batch["index"], batch["input_ids"], batch["labels"], batch["attention_mask"]):
            keep = mask.bool()
            digest.update(int(index).to_bytes(8, "little"))
            digest.update(ids[keep].long().numpy().tobytes())
            digest.update(labels[keep].long().numpy().tobytes())
    return digest.hexdigest()[:16]


def training_batches(datamodule: Any) -> list[dict[str, Tensor]]:
    """The whole training split in index order, collated `batch_size` examples at a time (no loader:
    nothing is drawn from the random number generators the run seeds)."""
    dataset = datamodule.split_dataset("train")
    size = datamodule.batch_size
    batches = [datamodule.collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])
               for start in range(0, len(dataset), size)]
    order = torch.cat([batch["index"] for batch in batches])
    if not torch.equal(order, torch.arange(len(dataset))):
        raise DataError("the training split's items do not carry their position as `index`: the teacher-output cache needs it")
    return batches


@dataclass(frozen=True)
class TeacherOutputs:
    """A loaded cache entry: the tensors of `outputs.safetensors` (on the CPU) and what was built."""

    ids: Tensor
    logps: Tensor
    tail: Tensor
    offsets: Tensor
    record: dict[str, Any]

    def lookup(self, index: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The cached rows of a batch's response tokens, in the order of `labels[:, 1:][scored]`:
        `teacher_top_ids [N, k]`, `teacher_top_logps [N, k]`, `teacher_tail_logp [N]` on `labels`' device.
        A row whose number of response tokens differs from the cache's is a `DataError`."""
        index = index.cpu().long()
        starts, counts = self.offsets[index], self.offsets[index + 1] - self.offsets[index]
        wanted = scored(labels[:, 1:]).sum(-1).cpu()
        if not torch.equal(counts, wanted):
            row = int((counts != wanted).nonzero()[0])
            raise DataError(f"training example {int(index[row])} has {int(wanted[row])} response tokens, its cached teacher outputs "
                            f"{int(counts[row])}: the cache {self.record['path']} is not this data's; delete it")
        first = torch.cumsum(counts, 0) - counts
        rows = starts.repeat_interleave(counts) + torch.arange(int(counts.sum())) - first.repeat_interleave(counts)
        device = labels.device
        return {"teacher_top_ids": self.ids[rows].to(device, non_blocking=True),
                "teacher_top_logps": self.logps[rows].to(device, non_blocking=True),
                "teacher_tail_logp": self.tail[rows].to(device, non_blocking=True)}


@torch.no_grad()
def compute_outputs(teacher: nn.Module, batches: list[dict[str, Tensor]], k: int, temperature: float, vocab_size: int,
                    device: torch.device) -> dict[str, Tensor]:
    """The tensors of `outputs.safetensors` (module docstring) from teacher forwards over `batches` on `device`."""
    ids, logps, tails, counts = [], [], [], []
    for batch in batches:
        mask = scored(batch["labels"][:, 1:])
        logits = lm_forward(teacher, batch["input_ids"].to(device), batch["attention_mask"].to(device))[:, :-1, :vocab_size]
        top_ids, top_logps, tail = top_k_log_probs(logits[mask.to(device)], k, temperature)
        ids.append(top_ids.cpu())
        logps.append(top_logps.float().cpu())
        tails.append(tail.float().cpu())
        counts.append(mask.sum(-1))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(counts).cumsum(0)])
    return {"ids": torch.cat(ids).contiguous(), "logps": torch.cat(logps).contiguous(), "tail": torch.cat(tails).contiguous(),
            "offsets": offsets}


def teacher_outputs(teacher: nn.Module, datamodule: Any, k: int, temperature: float, root: str | Path,
                    device: torch.device) -> TeacherOutputs:
    """The cached top-k outputs of `teacher` on `datamodule`'s training split: read from `root`, or
    computed now (on `device`) and stored there. Teacher forwards run in eval mode under no_grad, and
    draw from no random number generator, so a run that builds the entry and one that reads it train alike."""
    vocab_size = datamodule.vocab_size
    check_vocabulary(k, vocab_size)
    batches = training_batches(datamodule)
    config = {"format": FORMAT, "teacher": weights_fingerprint(teacher), "data": data_fingerprint(batches), "top_k": k,
              "temperature": float(temperature), "vocab_size": vocab_size}
    key = f"lm-outputs-{fingerprint(config)}"

    def build(_: Path) -> dict[str, bytes]:
        log.info("Computing the teacher's top-%d outputs on %d training batches (once: %s)", k, len(batches), key)
        was_training = teacher.training
        teacher.eval()
        tensors = compute_outputs(teacher, batches, k, temperature, vocab_size, device)
        teacher.train(was_training)
        info = config | {"tokens": int(tensors["offsets"][-1]), "examples": len(tensors["offsets"]) - 1}
        return {OUTPUTS_FILE: safetensors.torch.save(tensors), INFO_FILE: (json.dumps(info, indent=2) + "\n").encode()}

    entry = load_or_build(Path(root), key, build, what=f"teacher outputs {key} (top-{k})", setting="paths.teacher_dir")
    tensors = safetensors.torch.load(entry.files[OUTPUTS_FILE])
    info = json.loads(entry.files[INFO_FILE])
    record = info | {"source": "built" if entry.built else "cache", "path": str(entry.path)}
    return TeacherOutputs(tensors["ids"], tensors["logps"], tensors["tail"], tensors["offsets"], record)
