"""The teacher zoo: each teacher is trained once and cached under `paths.teacher_dir`.

A teacher is identified by a fingerprint of everything that shapes it: the teacher model's
config, the dataset's config, the seed, and the teacher's training recipe (`cfg.teacher`
without `ckpt_path`). Every run of a sweep that asks for the same teacher gets the same
weights; jobs that ask at the same time wait while one of them trains it (`kdlab.cache`: the
entry is checked by SHA-256 before use, retrained when corrupt, and read without a lock).

`teacher.recipe` says how the teacher is made:
- `mle` (the default): trained by maximum likelihood with `teacher.objective`, `teacher.optimizer`,
  `teacher.scheduler` for `teacher.max_epochs`. Its fingerprint leaves out `recipe` and `mcmi`, so
  it is the same whatever the MCMI settings are (and the same as before recipes existed);
- `mcmi`: that MLE teacher (taken from the cache, trained there if missing), then fine-tuned with
  `teacher.mcmi` (its objective `kdlab.objectives.mcmi.MCMI`, optimiser, schedule and epochs;
  docs/methods.md §6.1). Its fingerprint adds the `teacher.mcmi` settings to the MLE teacher's.

`+method=teacher` runs the teacher alone (`ZooTeacherModule`): `kdlab.run` takes it from `load_teacher`
(the cache entry a distillation run of the same model pair, dataset, seed and recipe uses, trained into
it when missing) and evaluates it like any run's model. Every method accepts the `teacher.*` options;
those its regime does not use are listed by `ignored_options` (logged once and recorded, not refused).

Every teacher trained here records `cmi`, the conditional mutual information of its predictions
over the training set (eval mode; `kdlab.objectives.mcmi.centroid_statistics`), in its metrics and
its loggers; an MCMI teacher also records `base_cmi`, the CMI of the MLE teacher it started from.

Cache layout: `<teacher_dir>/<fingerprint>/{teacher.safetensors, metrics.json, config.yaml,
manifest.json, csv/}`. The weights are a safetensors file: it holds tensors only (loading a
colleague's file on shared storage cannot run code, as a pickle can), checks its own header, and
is read by any framework.
"""

import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping
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
from kdlab.errors import ConfigError
from kdlab.fingerprint import fingerprint
from kdlab.loggers import dir_run_id, finish_wandb_run
from kdlab.modules import TeacherModule
from kdlab.objectives.mcmi import centroid_statistics

log = logging.getLogger(__name__)

WEIGHTS_FILE = "teacher.safetensors"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
RECIPES = ("mle", "mcmi")
RECIPE_KEYS = ("ckpt_path", "recipe", "mcmi", "outputs")  # not part of the MLE training recipe (outputs: kdlab.teacher_outputs)
CACHED_ROLES = ("frozen", "evaluated")  # the regimes (`teacher_role`) whose teacher `load_teacher` gives: teacher.* apply


class ZooTeacherModule(TeacherModule):
    """The regime of `+method=teacher`: the teacher of the zoo alone, as `model` (built from `model.teacher`).
    `kdlab.run` gives it the weights `load_teacher` returns and evaluates it (validation and test, the
    classification metric panel); nothing is fitted in the run itself: the cache trains its entry."""

    teacher_role = "evaluated"


def ignored_options(role: str | None, ckpt_path: str | None, overrides: Iterable[str]) -> list[str]:
    """The teacher options set for a run whose regime has `teacher_role` `role` that the regime does not use:
    `teacher.*` unless the teacher comes from `load_teacher` (`CACHED_ROLES`), `model.teacher.*` too when
    the regime has no teacher, and `teacher.outputs.*` unless a frozen teacher's outputs can be replayed.
    `teacher.ckpt_path` counts when it is set, any other key when an override of the command line
    (`overrides`, Hydra's task overrides) sets it."""
    unused = ("teacher.outputs",) if role == "evaluated" else () if role in CACHED_ROLES else (
        ("teacher",) if role is not None else ("teacher", "model.teacher"))
    keys = [override.split("=", 1)[0].lstrip("+~") for override in overrides]
    keys += ["teacher.ckpt_path"] if ckpt_path else []
    return sorted({key for key in keys if any(key == prefix or key.startswith(f"{prefix}.") for prefix in unused)})


@dataclass
class CachedTeacher:
    """A ready teacher: the model with its weights, where they came from, and its test metrics."""

    model: nn.Module
    source: str  # "cache", "trained" or "checkpoint"
    path: Path
    fingerprint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict | None = None  # the record of its cached outputs the run replays (kdlab.teacher_outputs), if any


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


def check_recipe(recipe: str, ckpt_path: str | None) -> None:
    """`teacher.recipe` is one of `RECIPES`, and only `mle` goes with a finished `teacher.ckpt_path`."""
    if recipe not in RECIPES:
        raise ConfigError(f"teacher.recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if ckpt_path and recipe != "mle":
        raise ConfigError(
            f"teacher.ckpt_path={ckpt_path} loads a finished teacher, but teacher.recipe={recipe} trains one "
            "from the cached MLE teacher: drop one of them"
        )


def load_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module) -> CachedTeacher:
    """Give `model` (built from `cfg.model.teacher`) the weights of the teacher for `cfg`:
    from `teacher.ckpt_path`, from the cache, or by training it now (and caching it), for `teacher.recipe`."""
    recipe = cfg.teacher.recipe
    check_recipe(recipe, cfg.teacher.ckpt_path)
    if cfg.teacher.ckpt_path:
        path = Path(cfg.teacher.ckpt_path)
        model.load_state_dict(read_state_dict(path))
        return CachedTeacher(model, "checkpoint", path)
    return cached_teacher(cfg, datamodule, model, recipe)


def cached_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module, recipe: str) -> CachedTeacher:
    """The teacher of `recipe` from its cache entry, trained into it if missing. An MCMI teacher is
    built from the cached MLE teacher (itself built first if missing), fine-tuned with `teacher.mcmi`."""
    config = teacher_config(cfg, recipe)
    key = fingerprint(config)
    root = Path(cfg.paths.teacher_dir)

    def train(log_dir: Path) -> dict[str, bytes]:
        if recipe == "mcmi":
            base = cached_teacher(cfg, datamodule, model, "mle")
            log.info("Teacher %s is not cached: fine-tuning teacher %s with MCMI (%d epochs)", key, base.fingerprint,
                     cfg.teacher.mcmi.max_epochs)
        else:
            log.info("Teacher %s is not cached: training it (%d epochs)", key, cfg.teacher.max_epochs)
        metrics = train_teacher(cfg, datamodule, model, log_dir, recipe, run_id=dir_run_id(root / key))
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
        entry = load_or_build(root, key, train, what=f"teacher {key} ({recipe})", setting="paths.teacher_dir")
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
    cfg: DictConfig, datamodule: L.LightningDataModule, model: nn.Module, log_dir: Path, recipe: str = "mle", run_id: str | None = None
) -> dict:
    """Train `model` with the settings of `recipe` (`objective`, `optimizer`, `scheduler`, `max_epochs` of
    `cfg.teacher`, or of `cfg.teacher.mcmi` for `mcmi`) on the run's data and hardware, logging to
    `log_dir` (and to the W&B run `run_id` when the run logs to W&B); return its test metrics and its
    training-set CMI `cmi` (for `mcmi`, also `base_cmi`: the CMI of the model it started from)."""
    settings = cfg.teacher.mcmi if recipe == "mcmi" else cfg.teacher
    L.seed_everything(cfg.seed, workers=True)
    module = TeacherModule(
        model=model,
        objective=instantiate(settings.objective),
        optimizer=instantiate(settings.optimizer),
        scheduler=instantiate(settings.scheduler) if settings.scheduler else None,
        num_classes=cfg.dataset.num_classes,
    )
    loggers = [CSVLogger(str(log_dir), name="csv", version="")]
    if "wandb" in cfg.logger:  # the teacher's own W&B run, tagged like the students distilled from it
        key = fingerprint(teacher_config(cfg, recipe))
        loggers.append(instantiate(cfg.logger.wandb, name=f"teacher-{key}", job_type="teacher", save_dir=str(log_dir),
                                   run_id=run_id, tags=["teacher", f"teacher:{key}", cfg.model.name, cfg.dataset.name]))
        loggers[-1].log_hyperparams({**teacher_config(cfg, recipe), "fingerprint": key})
    trainer = instantiate(
        cfg.trainer,
        max_epochs=settings.max_epochs,
        default_root_dir=str(log_dir),
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
        cmi = centroid_statistics(model.to(device), datamodule.train_dataloader(), num_classes, device, mode="eval", every_class=False).cmi
    model.to(origin)
    return cmi


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a plain `state_dict` file or a Lightning checkpoint of a kdlab module
    (`teacher.ckpt_path`); a missing, truncated or corrupt file is a `DataError` naming it."""
    state = read_checkpoint(path, setting="teacher.ckpt_path")
    if "state_dict" in state:  # a Lightning checkpoint: the trained model sits under `model.`
        state = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    return state
