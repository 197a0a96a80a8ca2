"""The teacher zoo: each teacher is trained once and cached under `paths.teacher_dir`.

A teacher is identified by a fingerprint of everything that shapes it: the teacher model's
config, the dataset's config, the seed, and the teacher's training recipe (`cfg.teacher`
without `ckpt_path`). Every run of a sweep that asks for the same teacher gets the same
weights; jobs that ask at the same time wait on a file lock while one of them trains it.

`teacher.recipe` says how the teacher is made:
- `mle` (the default): trained by maximum likelihood with `teacher.objective`, `teacher.optimizer`,
  `teacher.scheduler` for `teacher.max_epochs`. Its fingerprint leaves out `recipe` and `mcmi`, so
  it is the same whatever the MCMI settings are (and the same as before recipes existed);
- `mcmi`: that MLE teacher (taken from the cache, trained there if missing), then fine-tuned with
  `teacher.mcmi` (its objective `kdlab.objectives.mcmi.MCMI`, optimiser, schedule and epochs;
  docs/methods.md §6.1). Its fingerprint adds the `teacher.mcmi` settings to the MLE teacher's.

Every teacher trained here records `cmi`, the conditional mutual information of its predictions
over the training set (eval mode; `kdlab.objectives.mcmi.centroid_statistics`), in its metrics and
its loggers; an MCMI teacher also records `base_cmi`, the CMI of the MLE teacher it started from.

Cache layout: `<teacher_dir>/<fingerprint>/{teacher.pt, config.yaml, metrics.json, csv/}`.
"""

import json
import logging
import os
from collections.abc import Callable
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
from kdlab.errors import ConfigError
from kdlab.fingerprint import fingerprint
from kdlab.loggers import dir_run_id, finish_wandb_run
from kdlab.modules import TeacherModule
from kdlab.objectives.mcmi import centroid_statistics
from kdlab.results import write_json_atomic

log = logging.getLogger(__name__)

WEIGHTS_FILE = "teacher.pt"
RECIPES = ("mle", "mcmi")
RECIPE_KEYS = ("ckpt_path", "recipe", "mcmi")  # not part of the MLE training recipe


@dataclass
class CachedTeacher:
    """A ready teacher: the model with its weights, where they came from, and its test metrics."""

    model: nn.Module
    source: str  # "cache", "trained" or "checkpoint"
    path: Path
    fingerprint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def teacher_config(cfg: DictConfig, recipe: str | None = None) -> dict:
    """The resolved part of the run config that determines the teacher's weights, for `recipe`
    (default `cfg.teacher.recipe`): the MLE teacher's model, dataset, seed and training recipe, plus
    `mcmi` (the `teacher.mcmi` settings) for an MCMI teacher."""
    recipe = recipe or cfg.teacher.recipe
    training = OmegaConf.to_container(cfg.teacher, resolve=True)
    for key in RECIPE_KEYS:
        training.pop(key, None)
    config = {
        "model": OmegaConf.to_container(cfg.model.teacher, resolve=True),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "seed": cfg.seed,
        "recipe": training,
    }
    if recipe == "mcmi":
        config["mcmi"] = OmegaConf.to_container(cfg.teacher.mcmi, resolve=True)
    return config


def load_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module) -> CachedTeacher:
    """Give `model` (built from `cfg.model.teacher`) the weights of the teacher for `cfg`:
    from `teacher.ckpt_path`, from the cache, or by training it now (for `teacher.recipe`)."""
    recipe = cfg.teacher.recipe
    if recipe not in RECIPES:
        raise ConfigError(f"teacher.recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if cfg.teacher.ckpt_path:
        if recipe != "mle":
            raise ConfigError(
                f"teacher.ckpt_path={cfg.teacher.ckpt_path} loads a finished teacher, but teacher.recipe={recipe} trains one "
                "from the cached MLE teacher: drop one of them"
            )
        path = Path(cfg.teacher.ckpt_path)
        model.load_state_dict(read_state_dict(path))
        return CachedTeacher(model, "checkpoint", path)
    return cached_teacher(cfg, datamodule, model, recipe)


def cached_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module, recipe: str) -> CachedTeacher:
    """The teacher of `recipe` from its cache entry, trained into it (under the entry's file lock) if missing."""
    key = fingerprint(teacher_config(cfg, recipe))
    entry = Path(cfg.paths.teacher_dir) / key

    def train() -> dict[str, float]:
        return train_recipe(cfg, datamodule, model, recipe, entry)

    if is_worker_process():
        # A DDP worker process started by rank 0 while rank 0 holds the lock: it must take
        # part in the teacher's training rather than wait for it (rank 0 alone writes the cache).
        return _cached_or_trained(cfg, model, recipe, key, entry, train, write=False)
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(entry) + ".lock")
    if not (entry / WEIGHTS_FILE).exists() and lock.is_locked:
        log.info("Waiting for another job to finish training teacher %s", key)
    with lock:
        return _cached_or_trained(cfg, model, recipe, key, entry, train, write=True)


def _cached_or_trained(
    cfg: DictConfig, model: nn.Module, recipe: str, key: str, entry: Path, train: Callable[[], dict[str, float]], write: bool
) -> CachedTeacher:
    weights = entry / WEIGHTS_FILE
    if weights.exists():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        metrics = json.loads((entry / "metrics.json").read_text()) if (entry / "metrics.json").exists() else {}
        log.info("Teacher %s (%s) loaded from the cache: %s", key, recipe, weights)
        return CachedTeacher(model, "cache", weights, key, metrics)

    log.info("Teacher %s (%s) is not cached: training it", key, recipe)
    metrics = train()
    if write:
        entry.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(teacher_config(cfg, recipe)), entry / "config.yaml")
        write_json_atomic(entry / "metrics.json", metrics)
        tmp = weights.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, weights)  # last: a cache entry with weights is complete
    return CachedTeacher(model, "trained", weights, key, metrics)


def train_recipe(cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module, recipe: str, entry: Path) -> dict[str, float]:
    """Train `model` into the teacher of `recipe`; return its metrics. An MCMI teacher starts from the
    cached MLE teacher (locked and trained first if missing) and is fine-tuned with `teacher.mcmi`."""
    if recipe == "mcmi":
        base = cached_teacher(cfg, datamodule, model, "mle")
        log.info("Fine-tuning teacher %s with MCMI for %d epochs", base.fingerprint, cfg.teacher.mcmi.max_epochs)
    return train_teacher(cfg, datamodule, model, entry, recipe)


def train_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module, entry: Path, recipe: str = "mle") -> dict[str, float]:
    """Train `model` with the settings of `recipe` (`objective`, `optimizer`, `scheduler`, `max_epochs` of
    `cfg.teacher`, or of `cfg.teacher.mcmi` for `mcmi`) on the run's data and hardware; return its test
    metrics and its training-set CMI `cmi` (for `mcmi`, also `base_cmi`: the CMI of the model it started from)."""
    settings = cfg.teacher.mcmi if recipe == "mcmi" else cfg.teacher
    L.seed_everything(cfg.seed, workers=True)
    module = TeacherModule(
        model=model,
        objective=instantiate(settings.objective),
        optimizer=instantiate(settings.optimizer),
        scheduler=instantiate(settings.scheduler) if settings.scheduler else None,
        num_classes=cfg.dataset.num_classes,
    )
    loggers = [CSVLogger(str(entry), name="csv", version="")]
    if "wandb" in cfg.logger:  # the teacher's own W&B run, tagged like the students distilled from it
        key = entry.name
        entry.mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(cfg.logger.wandb, name=f"teacher-{key}", job_type="teacher", save_dir=str(entry),
                                   run_id=dir_run_id(entry), tags=["teacher", f"teacher:{key}", cfg.model.name, cfg.dataset.name]))
        loggers[-1].log_hyperparams({**teacher_config(cfg, recipe), "fingerprint": key})
    trainer = instantiate(
        cfg.trainer,
        max_epochs=settings.max_epochs,
        default_root_dir=str(entry),
        logger=loggers,
        callbacks=[instantiate(cfg.callbacks.progress_bar)] if "progress_bar" in cfg.callbacks else [],
        enable_checkpointing=False,
    )
    device = trainer.strategy.root_device
    try:
        base_cmi = training_set_cmi(model, datamodule, cfg.dataset.num_classes, device) if recipe == "mcmi" else None
        trainer.fit(module, datamodule=datamodule)
        (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
        cmi = training_set_cmi(model, datamodule, cfg.dataset.num_classes, device)
        for logger in loggers:
            logger.log_metrics({"train/cmi": cmi}, step=trainer.global_step)
            logger.save()
    finally:
        finish_wandb_run()
    model.eval()
    metrics = {name.replace("test/", ""): float(value) for name, value in results.items()} | {"cmi": cmi}
    return metrics | ({"base_cmi": base_cmi} if base_cmi is not None else {})


def training_set_cmi(model: nn.Module, datamodule: L.LightningDataModule, num_classes: int, device: torch.device) -> float:
    """The conditional mutual information of `model`'s predictions (eval mode) over the training data, on `device`."""
    datamodule.setup("fit")
    origin = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        cmi = centroid_statistics(model.to(device), datamodule.train_dataloader(), num_classes, device, mode="eval").cmi
    model.to(origin)
    return cmi


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a plain `state_dict` file or a Lightning checkpoint of a kdlab module."""
    if not path.exists():
        raise FileNotFoundError(f"teacher.ckpt_path={path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:  # a Lightning checkpoint: the trained model sits under `model.`
        state = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    return state
