"""What a run's directory name says beyond its run name: the job's overrides that differ from the defaults.

A multirun's job directory is `<job num>-<run name><differs>` and a single run's
`runs/<run name>/<time><differs>` (conf/train.yaml), where `differs(task overrides)` is `-` and the
command line's overrides (Hydra's `hydra.overrides.task`) beyond the axes the run name already holds
(method, divergence, model, dataset, seed), sorted and joined as Hydra's `override_dirname` joins
them: `-objective.temperature=2,trainer.max_epochs=5`. Overrides that do not change what a run
computes (`paths.*`, `logger`, `resume`, `ckpt_path`) are left out, so that `resume=true` names the
same directory; a `/` in a value is written `%2F`; a label longer than `MAX_LABEL` characters names
the keys by their last part, cut to fit, and ends in a hash of the whole label (so it stays unique). Two runs of one sweep directory whose run names agree differ here.
A directory named on the command line that already holds a run is never reused
(`kdlab.resume.unused_directory`).
"""

import hashlib

from omegaconf import ListConfig

IN_THE_NAME = ("method", "divergence", "model", "dataset", "seed")  # the run name's axes (run_name in conf/train.yaml)
UNCHANGED_BY = ("paths", "logger", "resume", "ckpt_path")  # what a run computes does not depend on these
MAX_LABEL = 150  # characters: with the run name, a directory name stays under the file systems' 255 bytes


def differs(overrides: ListConfig | list[str]) -> str:
    """`-k=v,k2=v2` for the overrides `k=v` (`+k=v`: `k=v`) that are neither in the run name nor
    `UNCHANGED_BY`, sorted by key; "" when none. Too long a label names each key by its last part
    (`temperature=2`), is cut to fit and ends in `~` and a hash of the whole label."""
    kept = sorted((_key(o), o.split("=", 1)[1] if "=" in o else "") for o in overrides if _group(_key(o)) not in (*IN_THE_NAME, *UNCHANGED_BY))
    whole = ",".join(f"{key}={value}" for key, value in kept).replace("/", "%2F")
    label = whole
    if len(whole) > MAX_LABEL:  # shortened keys may coincide (teacher.max_epochs, trainer.max_epochs): the hash keeps it unique
        short = ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in kept).replace("/", "%2F")
        label = f"{short[: MAX_LABEL - 9]}~{hashlib.sha256(whole.encode()).hexdigest()[:8]}"
    return f"-{label}" if label else ""


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip().lstrip("+~")


def _group(key: str) -> str:
    return key.split(".", 1)[0] if key.split(".", 1)[0] in ("paths", "logger") else key
