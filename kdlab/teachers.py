"""The teacher zoo: each teacher is trained once and cached under `paths.teacher_dir`.

A teacher is identified by a fingerprint of everything that shapes it: the teacher model's
config, the dataset's config, the seed, and the teacher's training recipe (`cfg.teacher`
without `ckpt_path`). Every run of a sweep that asks for the same teacher gets the same
weights; jobs that ask at the same time wait on a file lock while one of them trains it.

Cache layout: `<teacher_dir>/<fingerprint>/{teacher.pt, config.yaml, metrics.json, csv/}`.
"""

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from filelock import FileLock
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdlab.distributed import is_worker_process
from kdlab.fingerprint import fingerprint
from kdlab.loggers import dir_run_id, finish_wandb_run
from kdlab.modules import TeacherModule
from kdlab.results import write_json_atomic

log = logging.getLogger(__name__)

WEIGHTS_FILE = "teacher.pt"


@dataclass
class CachedTeacher:
    """A ready teacher: the model with its weights, where they came from, and its test metrics."""

    model: nn.Module
    source: str  # "cache", "trained" or "checkpoint"
    path: Path
    fingerprint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def teacher_config(cfg: DictConfig) -> dict:
    """The resolved part of the run config that determines the teacher's weights."""
    recipe = OmegaConf.to_container(cfg.teacher, resolve=True)
    recipe.pop("ckpt_path", None)
    return {
        "model": OmegaConf.to_container(cfg.model.teacher, resolve=True),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "seed": cfg.seed,
        "recipe": recipe,
    }


def load_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module) -> CachedTeacher:
    """Give `model` (built from `cfg.model.teacher`) the weights of the teacher for `cfg`:
    from `teacher.ckpt_path`, from the cache, or by training it now."""
    if cfg.teacher.ckpt_path:
        path = Path(cfg.teacher.ckpt_path)
        model.load_state_dict(read_state_dict(path))
        return CachedTeacher(model, "checkpoint", path)

    config = teacher_config(cfg)
    key = fingerprint(config)
    entry = Path(cfg.paths.teacher_dir) / key
    weights = entry / WEIGHTS_FILE
    if is_worker_process():
        # A DDP worker process started by rank 0 while rank 0 holds the lock: it must take
        # part in the teacher's training rather than wait for it (rank 0 alone writes the cache).
        return _cached_or_trained(cfg, datamodule, model, key, entry, write=False)
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(entry) + ".lock")
    if not weights.exists() and lock.is_locked:
        log.info("Waiting for another job to finish training teacher %s", key)
    with lock:
        return _cached_or_trained(cfg, datamodule, model, key, entry, write=True)


def _cached_or_trained(
    cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module, key: str, entry: Path, write: bool
) -> CachedTeacher:
    weights = entry / WEIGHTS_FILE
    if weights.exists():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        metrics = json.loads((entry / "metrics.json").read_text()) if (entry / "metrics.json").exists() else {}
        log.info("Teacher %s loaded from the cache: %s", key, weights)
        return CachedTeacher(model, "cache", weights, key, metrics)

    log.info("Teacher %s is not cached: training it (%d epochs)", key, cfg.teacher.max_epochs)
    metrics = train_teacher(cfg, datamodule, model, entry)
    if write:
        entry.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(teacher_config(cfg)), entry / "config.yaml")
        write_json_atomic(entry / "metrics.json", metrics)
        tmp = weights.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, weights)  # last: a cache entry with weights is complete
    return CachedTeacher(model, "trained", weights, key, metrics)


def train_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module, entry: Path) -> dict:
    """Train `model` with the teacher recipe on the run's data and hardware; return its test metrics."""
    L.seed_everything(cfg.seed, workers=True)
    module = TeacherModule(
        model=model,
        objective=instantiate(cfg.teacher.objective),
        optimizer=instantiate(cfg.teacher.optimizer),
        scheduler=instantiate(cfg.teacher.scheduler) if cfg.teacher.scheduler else None,
        num_classes=cfg.dataset.num_classes,
    )
    loggers = [CSVLogger(str(entry), name="csv", version="")]
    if "wandb" in cfg.logger:  # the teacher's own W&B run, tagged like the students distilled from it
        key = entry.name
        entry.mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(cfg.logger.wandb, name=f"teacher-{key}", job_type="teacher", save_dir=str(entry),
                                   run_id=dir_run_id(entry), tags=["teacher", f"teacher:{key}", cfg.model.name, cfg.dataset.name]))
        loggers[-1].log_hyperparams({**teacher_config(cfg), "fingerprint": key})
    trainer = instantiate(
        cfg.trainer,
        max_epochs=cfg.teacher.max_epochs,
        default_root_dir=str(entry),
        logger=loggers,
        callbacks=[instantiate(cfg.callbacks.progress_bar)] if "progress_bar" in cfg.callbacks else [],
        enable_checkpointing=False,
    )
    try:
        trainer.fit(module, datamodule=datamodule)
        (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        finish_wandb_run()
    model.eval()
    return {name.replace("test/", ""): float(value) for name, value in results.items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a plain `state_dict` file or a Lightning checkpoint of a kdlab module."""
    if not path.exists():
        raise FileNotFoundError(f"teacher.ckpt_path={path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:  # a Lightning checkpoint: the trained model sits under `model.`
        state = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    return state
