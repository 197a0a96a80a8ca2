"""Experiment loggers: W&B that never prompts or hangs without a network, and groups a grid's runs.

Every W&B run of a multirun (or of a W&B sweep) shares one group, is tagged with its method,
divergence, model and dataset, carries the resolved config flattened to dotted keys
(`objective.temperature`, ...) so that W&B's tables and parallel-coordinates panels can use any
of them, and names the teacher it was distilled from with the tag `teacher:<fingerprint>`; the
teacher's own training is a W&B run with the same tag (`kdlab.teachers`).
"""

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from kdlab.fingerprint import fingerprint


def wandb_mode(mode: str = "auto") -> str:
    """The W&B mode to run in.

    `auto` keeps a mode the user set with `WANDB_MODE`, goes online when an API key is configured
    (`WANDB_API_KEY` or a `~/.netrc` entry for api.wandb.ai, as `wandb login` writes), and is
    `offline` otherwise: runs are saved locally for a later `wandb sync`, nobody is asked to log in.
    """
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        return "online" if netrc.netrc().authenticators("api.wandb.ai") else "offline"
    except (FileNotFoundError, netrc.NetrcParseError):
        return "offline"


def run_group(group: str | None = "auto") -> str | None:
    """The W&B group of this run: `group` itself unless it is `auto`, which means the W&B sweep
    (`sweep-<id>`, under `wandb agent`) or the Hydra multirun (`multirun-<its directory name>`) the
    run belongs to, and no group for a single run."""
    if group != "auto":
        return group
    if os.environ.get("WANDB_SWEEP_ID"):
        return f"sweep-{os.environ['WANDB_SWEEP_ID']}"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"multirun-{Path(HydraConfig.get().sweep.dir).name}"
    return None


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}, "c": [2]}` -> `{"a.b": 1, "c": [2]}`: nested mappings become dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten_config(value, f"{name}.")
        else:
            flat[name] = value
    return flat


class KdlabWandbLogger(WandbLogger):
    """Lightning's `WandbLogger`, logging the run's config flattened to dotted keys and tagging
    the run `teacher:<fingerprint>` when the config's `teacher_record` names a cached teacher."""

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:  # type: ignore[override]
        config = flatten_config(params)
        super().log_hyperparams(config)
        teacher = config.get("teacher_record.fingerprint")
        if teacher:
            self.experiment.tags = (*self.experiment.tags, f"teacher:{teacher}")


def wandb_logger(
    mode: str = "auto", group: str | None = "auto", save_dir: str = ".", run_id: str | None = None, **kwargs: Any
) -> KdlabWandbLogger:
    """A W&B logger in the mode `wandb_mode(mode)` picks, in the group `run_group(group)` picks.

    The W&B run id is `run_id`, else the one `wandb agent` assigned (`WANDB_RUN_ID`), else
    `dir_run_id(save_dir)`; runs are resumable (`resume="allow"`), so a SLURM job requeued into
    the same directory continues the same W&B run. Other keyword arguments go to `WandbLogger`
    and `wandb.init` (project, name, tags, job_type, ...).
    """
    run_id = run_id or os.environ.get("WANDB_RUN_ID") or dir_run_id(save_dir)
    return KdlabWandbLogger(
        mode=wandb_mode(mode), group=run_group(group), save_dir=save_dir, id=run_id, resume="allow", **kwargs
    )


def dir_run_id(run_dir: str | Path) -> str:
    """The W&B run id of the run that writes into `run_dir`: a hash of its absolute path."""
    return fingerprint({"run_dir": str(Path(run_dir).resolve())})


def finish_wandb_run() -> None:
    """Close the W&B run, if any, so that the next job of a multirun starts its own run."""
    if wandb.run is not None:
        wandb.finish()
