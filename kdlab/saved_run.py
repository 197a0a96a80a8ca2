"""A finished run, opened again from its directory: its config with new overrides, its models with their weights.

`kdlab eval` and `kdlab export` start here. `open_run(RUN_DIR, overrides)` reads what `kdlab train`
left in the run directory (`.hydra/config.yaml`: the config as composed, `.hydra/hydra.yaml`: the
presets chosen, `results.json`: the run's record, `checkpoints/last.ckpt`: the weights the run was
tested with) and applies the overrides to the saved config: both the run's own overrides and these
are composed by Hydra with kdlab's config groups, and what these overrides change in that
composition (a whole preset for `dataset=NAME`, one key for `dataset.datamodule.batch_size=8`) is
changed in the saved config, key by key; every other key keeps the value the run had (a setting
kdlab added after the run, which its saved config lacks, takes today's default). The result is
validated (`kdlab.validate`), and must build the models the run trained (`model.*` resolving as it
did: a dataset with another number of classes is refused), before anything is loaded.

`rebuild(run)` builds the datamodule, models, objective and regime with `kdlab.run`'s own builders
and gives them their weights: the run's model and everything else the regime trained from the
checkpoint (checked whole first), a frozen teacher from the teacher cache entry the run recorded
(SHA-256 checked), or from `teacher.ckpt_path`. The objective's own parameters, which some
objectives create when fitting starts, are not needed to evaluate and are not restored.
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kdlab.errors import ConfigError, DataError
from kdlab.results import RESULTS_FILE
from kdlab.validate import resolved, validate

CONFIG_FILE = Path(".hydra") / "config.yaml"
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
CHECKPOINT = Path("checkpoints") / "last.ckpt"


@dataclass
class SavedRun:
    """A run directory with its config (the run's, with `overrides` applied) and its record (results.json)."""

    directory: Path
    cfg: DictConfig
    record: dict[str, Any]
    overrides: list[str]

    @property
    def method(self) -> str:
        return self.record["method"]

    @property
    def role(self) -> str | None:
        """The regime's `teacher_role` (`kdlab.modules.base.TrainingModule`)."""
        from hydra.utils import get_class

        return get_class(self.cfg.module._target_).teacher_role


@dataclass
class Weights:
    """Where a model's weights were read from: the file and its SHA-256 (and the cache entry of a teacher)."""

    path: Path
    sha256: str
    fingerprint: str | None = None

    def record(self) -> dict[str, str | None]:
        return {"path": str(self.path), "sha256": self.sha256, **({"fingerprint": self.fingerprint} if self.fingerprint else {})}


@dataclass
class Rebuilt:
    """The run's regime (`module`, its models with their weights), its datamodule, and where the weights came from."""

    module: Any
    datamodule: Any
    weights: Weights  # of the run's own model (`module.model`)
    teacher: Weights | None  # of a teacher taken from the cache or a checkpoint


def open_run(directory: Path, overrides: list[str]) -> SavedRun:
    """The run in `directory` with `overrides` applied, validated; `ConfigError`/`DataError` naming the
    file or key and the fix when it is no finished kdlab run, has no checkpoint, or the overrides do
    not fit its models. Sets Hydra's config (for `${hydra:...}`) to the run's."""
    directory = Path(directory)
    missing = [name for name in (CONFIG_FILE, HYDRA_FILE, Path(RESULTS_FILE)) if not (directory / name).is_file()]
    if missing:
        raise ConfigError(f"{directory} is not a kdlab run directory (it has no {', '.join(map(str, missing))}): give the "
                          "directory kdlab train printed at its end (run directory: <outputs>/runs/<run name>/<time>)")
    try:
        record = json.loads((directory / RESULTS_FILE).read_text())
    except ValueError as error:
        raise DataError(f"{directory / RESULTS_FILE} is not JSON ({error}): the run's record is damaged") from error
    if record.get("status") != "completed":
        raise ConfigError(f"{directory} holds a run that did not complete (results.json status {record.get('status')!r}: "
                          f"{record.get('error', 'no error recorded')}); finish it with `kdlab train ... resume=true` first")
    cfg = _compose(directory, overrides)
    run = SavedRun(directory, cfg, record, list(overrides))
    if run.role != "evaluated" and not (directory / CHECKPOINT).is_file():
        raise DataError(f"{directory} has no checkpoint ({CHECKPOINT} is missing: the run was trained without "
                        "callbacks.checkpoint, or the file was deleted); train the run again with checkpoints")
    _check_same_models(directory, cfg, overrides)
    validate(cfg, run.method)
    return run


def _compose(directory: Path, overrides: list[str]) -> DictConfig:
    """The saved config with what `overrides` change in Hydra's composition of the run's own overrides."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException

    import kdlab.conf  # noqa: F401  (registers the `divergence` group)

    saved = OmegaConf.to_container(OmegaConf.load(directory / CONFIG_FILE), resolve=False)
    task = list(OmegaConf.load(directory / HYDRA_FILE).hydra.overrides.task)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("kdlab.conf", version_base="1.3"):
            before = compose("train", overrides=task, return_hydra_config=True)
            after = compose("train", overrides=[*task, *overrides], return_hydra_config=True)
    except HydraException as error:
        reason = str(error).splitlines()[0].removeprefix("In 'train': ")
        raise ConfigError(f"{' '.join(overrides) or 'the run overrides'}: {reason} (kdlab list shows the presets)") from None
    before, changed = OmegaConf.to_container(before, resolve=False), OmegaConf.to_container(after, resolve=False)
    _add_missing(saved, before)
    _patch(saved, before, changed)
    with open_dict(after):  # Hydra's node as composed now (the presets chosen), in the run's directory
        after.hydra.runtime.output_dir = str(directory.resolve())
    HydraConfig.instance().set_config(after)
    return OmegaConf.create(saved)


def _add_missing(saved: dict, before: dict) -> None:
    """Give `saved` the keys of `before` it lacks (settings kdlab added after the run: today's defaults)."""
    for key, value in before.items():
        if key == "hydra":
            continue
        if key not in saved:
            saved[key] = value
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            _add_missing(saved[key], value)


def _patch(saved: dict, before: dict, after: dict) -> None:
    """Make in `saved` every change from `before` to `after` (keys added, removed or given another value)."""
    for key in before.keys() | after.keys():
        if key == "hydra":
            continue
        if key not in after:
            saved.pop(key, None)
        elif isinstance(after[key], dict) and isinstance(before.get(key), dict) and isinstance(saved.get(key), dict):
            _patch(saved[key], before[key], after[key])
        elif key not in before or before[key] != after[key]:
            saved[key] = after[key]


def _check_same_models(directory: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """`model.*` resolves as in the run (its checkpoint's shapes): else one line naming the key."""
    trained = resolved(OmegaConf.load(directory / CONFIG_FILE))["model"]
    asked = resolved(cfg)["model"]
    for key, was, now in _differences(trained, asked, "model"):
        raise ConfigError(f"{key}={now} with {' '.join(overrides)}, but the run's model was built with {key}={was} (its "
                          "checkpoint's shape): evaluate on data that fits it, or drop the overrides that change it")


def _differences(was: Any, now: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(was, dict) and isinstance(now, dict):
        for key in sorted(was.keys() | now.keys()):
            yield from _differences(was.get(key), now.get(key), f"{prefix}.{key}")
    elif was != now:
        yield prefix, was, now


def rebuild(run: SavedRun, with_teacher: bool = True) -> Rebuilt:
    """The run's regime with its models and weights (see the module docstring); `with_teacher=False`
    leaves a frozen teacher without its trained weights (exporting the student does not need them)."""
    import lightning as L
    from hydra.utils import get_class

    from kdlab.run import build_models, build_module, build_objective
    from kdlab.teachers import CACHED_ROLES

    cfg = run.cfg
    objective, _ = build_objective(cfg, run.method)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model, teacher_model = build_models(cfg, objective)
    role = get_class(cfg.module._target_).teacher_role
    teacher = None
    if role in CACHED_ROLES and (with_teacher or role == "evaluated"):
        teacher = _load_teacher(run, datamodule, teacher_model if teacher_model is not None else model)
    module = build_module(cfg, model, objective, teacher_model)
    weights = teacher if role == "evaluated" else _load_checkpoint(module, run.directory / CHECKPOINT)
    return Rebuilt(module, datamodule, weights, None if role == "evaluated" else teacher)


def _load_teacher(run: SavedRun, datamodule: Any, model: Any) -> Weights:
    """Give `model` the weights of the run's teacher: `teacher.ckpt_path` when set, else the cache entry
    its results.json names (where it was, or under `paths.teacher_dir`), checked against its manifest."""
    import safetensors.torch

    from kdlab.cache import CorruptEntry, read_entry
    from kdlab.teachers import WEIGHTS_FILE, load_teacher

    if run.cfg.teacher.ckpt_path:
        path = Path(load_teacher(run.cfg, datamodule, model).path)
        return Weights(path, _sha256(path.read_bytes()))
    recorded = run.record.get("teacher") or {}
    key = recorded.get("fingerprint")
    places = [Path(recorded["path"]).parent] if recorded.get("path") else []
    places += [Path(run.cfg.paths.teacher_dir) / key] if key else []
    for place in places:
        try:
            files = read_entry(place)
        except CorruptEntry as error:
            raise DataError(f"the run's teacher {place} is corrupt ({error}): delete it and run `kdlab train` with the "
                            "run's overrides to train it again, or give its weights with teacher.ckpt_path=FILE") from error
        if files is not None:
            model.load_state_dict(safetensors.torch.load(files[WEIGHTS_FILE]))
            return Weights(place / WEIGHTS_FILE, _sha256(files[WEIGHTS_FILE]), key)
    raise DataError(f"the run's teacher {key} is not in the teacher cache ({', '.join(map(str, places)) or 'none recorded'}): "
                    "set paths.teacher_dir (or KDLAB_OUTPUTS) to the cache it was trained in, or give its weights with teacher.ckpt_path=FILE")


def _load_checkpoint(module: Any, path: Path) -> Weights:
    """Load the checkpoint's `state_dict` into `module`: every key but the frozen sub-models' (left out of
    checkpoints) and the objective's (see the module docstring) must be there, with its shape."""
    from kdlab.checkpoints import read_checkpoint

    state = read_checkpoint(path, setting="the run's checkpoint")
    if "state_dict" not in state:
        raise DataError(f"{path} is not a Lightning checkpoint of a kdlab run (no state_dict): replace it with the run's own")
    kept = tuple(f"{name}." for name in (*module.frozen, "objective"))
    try:
        result = module.load_state_dict(state["state_dict"], strict=False)
    except RuntimeError as error:
        reason = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
        raise DataError(f"{path} does not fit the models built from the run's config ({reason}): "
                        "evaluate with the overrides the run was trained with") from error
    wrong = [key for key in (*result.missing_keys, *result.unexpected_keys) if not key.startswith(kept)]
    if wrong:
        raise DataError(f"{path} does not fit the models built from the run's config (keys {', '.join(wrong[:3])} differ): "
                        "evaluate with the overrides the run was trained with")
    return Weights(path, _sha256(path.read_bytes()))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
