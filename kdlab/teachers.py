"""The teacher zoo: each teacher is trained once and cached under `paths.teacher_dir`.

A teacher is identified by a fingerprint of everything that shapes it: the teacher model's
config, the dataset's config, the seed, and the teacher's training recipe (`cfg.teacher`
without `ckpt_path`). Every run of a sweep that asks for the same teacher gets the same
weights; jobs that ask at the same time wait while one of them trains it (`kdlab.cache`: the
entry is checked by SHA-256 before use, retrained when corrupt, and read without a lock).

Cache layout: `<teacher_dir>/<fingerprint>/{teacher.safetensors, metrics.json, config.yaml,
manifest.json, csv/}`. The weights are a safetensors file: it holds tensors only (loading a
colleague's file on shared storage cannot run code, as a pickle can), checks its own header, and
is read by any framework.
"""

import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import safetensors.torch
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdlab.cache import CorruptEntry, Entry, load_or_build, read_entry
from kdlab.checkpoints import read_checkpoint
from kdlab.distributed import is_worker_process
from kdlab.fingerprint import fingerprint
from kdlab.loggers import dir_run_id, finish_wandb_run
from kdlab.modules import TeacherModule

log = logging.getLogger(__name__)

WEIGHTS_FILE = "teacher.safetensors"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"


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
    from `teacher.ckpt_path`, from the cache, or by training it now (and caching it)."""
    if cfg.teacher.ckpt_path:
        path = Path(cfg.teacher.ckpt_path)
        model.load_state_dict(read_state_dict(path))
        return CachedTeacher(model, "checkpoint", path)

    config = teacher_config(cfg)
    key = fingerprint(config)
    root = Path(cfg.paths.teacher_dir)

    def train(log_dir: Path) -> dict[str, bytes]:
        log.info("Teacher %s is not cached: training it (%d epochs)", key, cfg.teacher.max_epochs)
        metrics = train_teacher(cfg, datamodule, model, log_dir, run_id=dir_run_id(root / key))
        return {
            WEIGHTS_FILE: safetensors.torch.save(storable(model.state_dict())),
            METRICS_FILE: (json.dumps(metrics, indent=2) + "\n").encode(),
            CONFIG_FILE: OmegaConf.to_yaml(OmegaConf.create(config)).encode(),
        }

    if is_worker_process():
        # A DDP worker process started by rank 0 while rank 0 trains the teacher: it takes part in the
        # training rather than wait for it (rank 0 alone stores the entry), unless the entry is complete.
        entry = _worker_entry(root / key, train)
    else:
        entry = load_or_build(root, key, train, what=f"teacher {key}", setting="paths.teacher_dir")
    if not entry.built:
        model.load_state_dict(safetensors.torch.load(entry.files[WEIGHTS_FILE]))
    metrics = json.loads(entry.files[METRICS_FILE])
    return CachedTeacher(model, "trained" if entry.built else "cache", entry.path / WEIGHTS_FILE, key, metrics)


def _worker_entry(path: Path, train: Callable[[Path], dict[str, bytes]]) -> Entry:
    try:
        files = read_entry(path)
    except CorruptEntry:
        files = None  # rank 0 found it corrupt too, and trains it again
    if files is not None:
        return Entry(path, files, built=False)
    with tempfile.TemporaryDirectory() as scratch:  # rank > 0 loggers write nothing
        return Entry(path, train(Path(scratch)), built=True)


def storable(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as safetensors stores it: contiguous CPU tensors, with a copy of a tensor that shares its
    storage with an earlier one (tied weights, which safetensors refuses to write twice)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    return tensors


def train_teacher(
    cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module, log_dir: Path, run_id: str | None = None
) -> dict:
    """Train `model` with the teacher recipe on the run's data and hardware, logging to `log_dir` (and to
    the W&B run `run_id` when the run logs to W&B); return its test metrics."""
    L.seed_everything(cfg.seed, workers=True)
    module = TeacherModule(
        model=model,
        objective=instantiate(cfg.teacher.objective),
        optimizer=instantiate(cfg.teacher.optimizer),
        scheduler=instantiate(cfg.teacher.scheduler) if cfg.teacher.scheduler else None,
        num_classes=cfg.dataset.num_classes,
    )
    loggers = [CSVLogger(str(log_dir), name="csv", version="")]
    if "wandb" in cfg.logger:  # the teacher's own W&B run, tagged like the students distilled from it
        key = fingerprint(teacher_config(cfg))
        loggers.append(instantiate(cfg.logger.wandb, name=f"teacher-{key}", job_type="teacher", save_dir=str(log_dir),
                                   run_id=run_id, tags=["teacher", f"teacher:{key}", cfg.model.name, cfg.dataset.name]))
        loggers[-1].log_hyperparams({**teacher_config(cfg), "fingerprint": key})
    trainer = instantiate(
        cfg.trainer,
        max_epochs=cfg.teacher.max_epochs,
        default_root_dir=str(log_dir),
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
    """Model weights from a plain `state_dict` file or a Lightning checkpoint of a kdlab module
    (`teacher.ckpt_path`); a missing, truncated or corrupt file is a `DataError` naming it."""
    state = read_checkpoint(path, setting="teacher.ckpt_path")
    if "state_dict" in state:  # a Lightning checkpoint: the trained model sits under `model.`
        state = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    return state
