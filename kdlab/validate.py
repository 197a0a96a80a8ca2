"""The composed config checked before anything is built: one `ConfigError` line naming the key and the fix.

`validate(cfg, method)` runs first in `kdlab.run.run`, in milliseconds (it imports the classes the
config names and reads their signatures; it builds no model, and loads no data but a user's own images,
which the image presets read to infer their classes and channels):

1. every value resolves (an unset `${oc.env:...}` names its key);
2. every argument of every node with a `_target_` (trainer, optimiser, scheduler, objective, module,
   datamodule, models, callbacks, loggers, and their nested nodes) is a parameter of the callable it
   names (closest names suggested), and its value has the type that parameter's annotation declares
   (`trainer.max_epochs=abc`: `Trainer(max_epochs: int | None)`); kdlab's own root keys (`seed`,
   `resume`, `teacher.max_epochs`, ...) have the types in `ROOT_KEYS`;
3. numbers are in range: `RANGES`, by the parameter's name wherever it appears (`lr > 0`,
   `temperature > 0`, `batch_size >= 1`, ...);
4. the W&B mode is one W&B knows (TensorBoard, when asked for, is installed), an explicit teacher checkpoint is a whole file (for a method that
   uses it: the others ignore the teacher options, `kdlab.teachers.ignored_options`), a GPU asked for is
   there;
5. the dataset gives the batches the method's regime trains on (`batches`, declared by every regime
   and every datamodule class), and a regime that distils from a teacher has a model pair with one;
6. for a user's own images, `dataset.num_classes` and `dataset.in_channels` are those the data has
   (`kdlab.data.images`: the presets infer them, reading the files once); for a user's own text,
   `dataset.num_classes` and `dataset.labels` (`kdlab.data.text_classification`).

A value reached through an interpolation (`dataset.datamodule.batch_size: ${dataset.batch_size}`) is
reported under the key the user sets (`dataset.batch_size`). `build(node, key)` instantiates a node so
that a constructor's own `ValueError` is a `ConfigError` naming the node's key.
"""

import difflib
import inspect
import math
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from kdlab.annotations import conforms, describe
from kdlab.conf import CONF_DIR
from kdlab.errors import ConfigError, KdlabError

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")

# kdlab's own keys (those no constructor receives as they are).
ROOT_KEYS: dict[str, Any] = {
    "seed": int,
    "resume": bool,
    "ckpt_path": str | None,
    "optimized_metric": str,
    "run_name": str,
    "teacher.ckpt_path": str | None,
    "teacher.max_epochs": int,
    "dataset.name": str,
    "dataset.num_classes": int | None,
    "dataset.in_channels": int | None,
    "dataset.labels": list[str] | None,
    "dataset.batch_size": int,
    "model.name": str,
    "model.lr": float,
    "model.teacher_lr": float,
}


def _positive(value: float) -> bool:
    return value > 0


def _epochs(value: int) -> bool:
    return value == -1 or value >= 1


def _batches(value: float) -> bool:
    return value >= 0 if isinstance(value, int) else 0.0 <= value <= 1.0


# Ranges by parameter name, wherever the parameter appears: (holds, what it must be).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "lr": (_positive, "> 0"),
    "teacher_lr": (_positive, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "temperature": (_positive, "> 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "num_workers": (lambda v: v >= 0, ">= 0"),
    "max_epochs": (_epochs, ">= 1 (or -1: no limit)"),
    "max_steps": (_epochs, ">= 1 (or -1: no limit)"),
    "T_max": (lambda v: v >= 1, ">= 1"),
    "accumulate_grad_batches": (lambda v: v >= 1, ">= 1"),
    "check_val_every_n_epoch": (lambda v: v >= 1, ">= 1"),
    "gradient_clip_val": (lambda v: v >= 0, ">= 0"),
    "limit_train_batches": (_batches, "a count >= 0 or a fraction in [0, 1]"),
    "limit_val_batches": (_batches, "a count >= 0 or a fraction in [0, 1]"),
    "limit_test_batches": (_batches, "a count >= 0 or a fraction in [0, 1]"),
    "num_nodes": (lambda v: v >= 1, ">= 1"),
    "devices": (lambda v: v >= 1 or v == -1, ">= 1 (or -1: all), a list of ids, or auto"),
}

# Arguments naming a hub model or a local directory: a local path (/..., ./..., ~/...) must exist.
LOCAL_PATHS = ("name_or_path", "tokenizer")

_BATCHES = {
    "labelled": "labelled inputs (images or sentences with a class)",
    "text": "text (prompts and responses)",
    "preferences": "preference pairs (a prompt, a chosen and a rejected response)",
    "prompts": "prompts alone (for on-policy sampling)",
}


def validate(cfg: DictConfig, method: str) -> None:
    """`ConfigError` for the first key of `cfg` that cannot work (see the module docstring)."""
    config = resolved(cfg)
    raw = OmegaConf.to_container(cfg, resolve=False)
    for key, annotation in ROOT_KEYS.items():
        if _has(config, key):
            check_value(key, _get(config, key), annotation, raw)
    _check_data_fits_method(cfg, method)
    _check_inferred(cfg, config)
    for path, node in target_nodes(config):
        check_arguments(path, node, raw)
    _check_loggers(cfg)
    _check_teacher_checkpoint(config, getattr(get_class(cfg.module._target_), "teacher_role", None))
    _check_teacher_views(cfg, config, method)
    _check_teacher_outputs(config)
    _check_accelerator(config["trainer"])


# ---- values --------------------------------------------------------------------------------------
def resolved(cfg: DictConfig) -> dict[str, Any]:
    """`cfg` with every interpolation resolved; `ConfigError` naming the first key that does not resolve
    (a kdlab error raised by a resolver, e.g. `inferred` reading the data, is raised as it is)."""
    image_data()  # registers `${inferred:...}`
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as error:  # noqa: BLE001 - OmegaConf's resolution errors have no common base; find the key below
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, KdlabError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
    for key, problem in _unresolvable(cfg, ""):
        raise ConfigError(f"{key}={_raw_text(cfg, key)} cannot be resolved ({problem}): set {key}, or what it refers to")
    return OmegaConf.to_container(cfg, resolve=True)


def recordable(cfg: DictConfig) -> dict[str, Any]:
    """`cfg` resolved where it can be, unresolvable values kept as written (for a failure's record)."""
    image_data()  # registers `${inferred:...}`
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - record what can be recorded
        return _partially_resolved(cfg)


def image_data() -> ModuleType:
    """`kdlab.data.images`, which registers the resolver `${inferred:...}` of the image presets; imported when a
    config is resolved, not with this module (`kdlab train --cfg job` imports it and must not load Lightning)."""
    from kdlab.data import images

    return images


def _unresolvable(node: DictConfig | ListConfig, prefix: str) -> Iterator[tuple[str, str]]:
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for key in keys:
        name = f"{prefix}[{key}]" if isinstance(node, ListConfig) else f"{prefix}{'.' if prefix else ''}{key}"
        try:
            value = node[key]
        except Exception as error:  # noqa: BLE001
            yield name, _first_line(error)
            continue
        if isinstance(value, DictConfig | ListConfig):
            yield from _unresolvable(value, name)


def _partially_resolved(node: DictConfig | ListConfig) -> Any:
    raw = OmegaConf.to_container(node, resolve=False)
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    values = {}
    for key in keys:
        try:
            value = node[key]
            values[key] = _partially_resolved(value) if isinstance(value, DictConfig | ListConfig) else value
        except Exception:  # noqa: BLE001 - keep the text of what does not resolve
            values[key] = raw[key]
    return list(values.values()) if isinstance(node, ListConfig) else values


def _raw_text(cfg: DictConfig, key: str) -> str:
    """The value of `key` as written (a list item's key, `a.b[2]`, is shown as its list's)."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("[")[0].split("."):
        node = node[part]
    return str(node)


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, without OmegaConf's "X raised while resolving interpolation:" prefix."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return re.sub(r"^\w+ raised while resolving interpolation: ", "", text.splitlines()[0]).strip("\"'")


# ---- arguments of the nodes Hydra builds ---------------------------------------------------------
def target_nodes(config: Any, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """`(key, node)` of every mapping with a `_target_` in `config`, outer nodes first."""
    if isinstance(config, dict):
        if "_target_" in config:
            yield prefix, config
        for key, value in config.items():
            yield from target_nodes(value, f"{prefix}{'.' if prefix else ''}{key}")
    elif isinstance(config, list):
        for index, value in enumerate(config):
            yield from target_nodes(value, f"{prefix}[{index}]")


def check_arguments(path: str, node: dict[str, Any], raw: Any) -> None:
    """Every argument of `node` is a parameter of its `_target_`, of the annotated type and in range."""
    target = node["_target_"]
    try:
        function = get_object(target)
    except Exception as error:  # noqa: BLE001 - ImportError, AttributeError, ...
        raise ConfigError(f"{path}._target_={target} cannot be imported ({_first_line(error)}): fix the name") from None
    parameters, hints = _signature(function)
    if parameters is None:
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for name, value in node.items():
        if name in _HYDRA_KEYS:
            continue
        key = f"{path}.{name}"
        if name not in parameters:
            if takes_any:
                continue
            close = difflib.get_close_matches(name, list(parameters), n=3)
            names = [p for p in parameters if p != "self"]
            hint = f"did you mean {', '.join(close)}?" if close else f"it takes {', '.join(names[:8])}" + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            raise ConfigError(f"{_source(raw, key)} is not an argument of {target}: {hint}")
        check_value(key, value, hints.get(name, parameters[name].annotation), raw, f" (the {name} argument of {target})")
        if name in LOCAL_PATHS and isinstance(value, str) and value.startswith(("/", "./", "../", "~")) and not Path(value).expanduser().exists():
            raise ConfigError(f"{_source(raw, key)}={value} does not exist: give the directory a model or tokenizer was saved in "
                              "(save_pretrained), or a hub name")


def _signature(function: Any) -> tuple[Mapping[str, inspect.Parameter] | None, dict[str, Any]]:
    """The parameters and resolved annotations of a callable (a class: of its `__init__`)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return None, {}
    try:
        hints = typing.get_type_hints(function.__init__ if inspect.isclass(function) else function)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: check the names only
        hints = {}
    return parameters, hints


def check_value(key: str, value: Any, annotation: Any, raw: Any, owner: str = "") -> None:
    """`ConfigError` unless `value` has type `annotation` and is within `RANGES` of its name."""
    if conforms(value, annotation) is False:
        raise ConfigError(f"{_source(raw, key)}={value!r} must be {describe(annotation)}{owner}")
    rule = RANGES.get(key.rsplit(".", 1)[-1])
    if rule is not None and isinstance(value, int | float) and not isinstance(value, bool):
        holds, expected = rule
        if (isinstance(value, float) and math.isnan(value)) or not holds(value):
            raise ConfigError(f"{_source(raw, key)}={value!r} must be {expected}")


def _source(raw: Any, key: str) -> str:
    """The key a user sets for `key`: where a plain interpolation (`${a.b}`) chain leads."""
    for _ in range(10):
        value = _get(raw, key) if _has(raw, key) else None
        match = _INTERPOLATION.match(value) if isinstance(value, str) else None
        if match is None:
            return key
        key = match.group(1)
    return key


def _has(config: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return False
        config = config[part]
    return True


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


# ---- settings checked against the machine and the files --------------------------------------------
def _check_loggers(cfg: DictConfig) -> None:
    """The W&B mode is one W&B knows; TensorBoard's writer is installed."""
    if "wandb" in cfg.logger:
        from kdlab.loggers import wandb_mode

        wandb_mode(cfg.logger.wandb.get("mode", "auto"))
    if "tensorboard" in cfg.logger:
        from kdlab.loggers import check_tensorboard

        check_tensorboard()


def _check_teacher_checkpoint(config: dict[str, Any], role: str | None) -> None:
    """The recipe and an explicit teacher checkpoint, for a regime that uses them (others ignore them)."""
    from kdlab.teachers import CACHED_ROLES

    teacher = config.get("teacher", {})
    if role not in CACHED_ROLES:
        return
    path = teacher.get("ckpt_path")
    if "recipe" in teacher:
        from kdlab.teachers import check_recipe

        check_recipe(teacher["recipe"], path)
    if path:
        from kdlab.checkpoints import check_checkpoint

        check_checkpoint(path, setting="teacher.ckpt_path")


def _check_teacher_views(cfg: DictConfig, config: dict[str, Any], method: str) -> None:
    """`teacher.outputs` (the vision teacher-output cache) in range, and only where cached views can be replayed."""
    outputs = config.get("teacher", {}).get("outputs")
    if outputs is not None:
        from kdlab.teacher_outputs import check_teacher_outputs

        check_teacher_outputs(outputs, method, get_class(cfg.module._target_), get_class(cfg.objective._target_),
                              get_class(cfg.dataset.datamodule._target_), cfg.dataset.name)


def _check_teacher_outputs(config: dict[str, Any]) -> None:
    """`module.teacher_top_k` (the LM teacher-output cache) with settings it can serve."""
    if config.get("module", {}).get("teacher_top_k") is not None:
        from kdlab.lm_teacher_outputs import check_config

        check_config(config)


def _check_accelerator(trainer: dict[str, Any]) -> None:
    """A GPU asked for is there, and as many as asked for."""
    import torch

    accelerator, devices = trainer.get("accelerator"), trainer.get("devices")
    if accelerator not in ("gpu", "cuda"):
        return
    available = torch.cuda.device_count()
    if available == 0:
        raise ConfigError(f"trainer.accelerator={accelerator}, but no CUDA GPU is visible here: use hardware=cpu "
                          "(or trainer.accelerator=cpu), or run on a machine with a GPU")
    wanted = devices if isinstance(devices, int) and devices > 0 else len(devices) if isinstance(devices, list) else None
    if wanted is not None and wanted > available:
        raise ConfigError(f"trainer.devices={devices} asks for {wanted} GPU(s), but {available} are visible here: "
                          f"set trainer.devices={available} or fewer")


# ---- the dataset and the method ------------------------------------------------------------------
def _check_data_fits_method(cfg: DictConfig, method: str) -> None:
    """The dataset gives the batches the regime trains on; a regime with a teacher has a model pair with one."""
    regime, data = get_class(cfg.module._target_), get_class(cfg.dataset.datamodule._target_)
    wanted, given = getattr(regime, "batches", None), getattr(data, "batches", None)
    if wanted and given and wanted != given:
        datasets = [name for name, kind in dataset_batches().items() if kind == wanted]
        from kdlab.methods import catalogue

        methods = [m.name for m in catalogue() if getattr(m.regime, "batches", None) == given]
        raise ConfigError(
            f"+method={method} trains on {_BATCHES.get(wanted, wanted)}, but dataset={cfg.dataset.name} gives "
            f"{_BATCHES.get(given, given)}: use dataset={'|'.join(datasets)}, or a method for this dataset (+method={'|'.join(methods)})"
        )
    if getattr(regime, "teacher_role", None) in ("frozen", "online", "evaluated") and cfg.model.get("teacher") is None:
        raise ConfigError(f"+method={method} distils from a teacher, but model={cfg.model.name} has none (model.teacher: null): "
                          "use a teacher/student model pair (kdlab list models)")


def _check_inferred(cfg: DictConfig, config: dict[str, Any]) -> None:
    """For a user's own images (an `ImageDataModule`), `dataset.num_classes` and `dataset.in_channels` are the
    data's, and for text (a `TextClassificationDataModule`) `dataset.num_classes` and `dataset.labels`: the
    presets infer them, and an override that disagrees would build models for other data."""
    from kdlab.data.text_classification import TextClassificationDataModule

    node, images = cfg.dataset.datamodule, image_data()
    target = get_class(node._target_)
    keys = ("num_classes", "in_channels") if issubclass(target, images.ImageDataModule) else (
        ("num_classes", "labels") if issubclass(target, TextClassificationDataModule) else ())
    for key in keys:
        given, found = config["dataset"].get(key), images.inferred(key, node)
        if given != found:
            raise ConfigError(f"dataset.{key}={given}, but the data has {found}: drop the override (dataset={cfg.dataset.name} "
                              f"infers it from the data) or set dataset.{key}={found}")


def dataset_batches() -> dict[str, str | None]:
    """Every dataset preset and the kind of batches its datamodule class gives (`batches`)."""
    kinds = {}
    for path in sorted((CONF_DIR / "dataset").glob("*.yaml")):
        target = OmegaConf.load(path).get("datamodule", {}).get("_target_")
        try:
            kinds[path.stem] = getattr(get_class(target), "batches", None) if target else None
        except Exception:  # noqa: BLE001 - a preset whose class does not import is no candidate
            kinds[path.stem] = None
    return kinds


# ---- building ------------------------------------------------------------------------------------
def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(node, **kwargs)`; a `ValueError` or `TypeError` of the constructor (its
    own check of its arguments) is a `ConfigError` naming `key` and the class."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, KdlabError):
            raise cause from None
        if isinstance(cause, ValueError | TypeError):
            raise ConfigError(f"{key} ({node.get('_target_')}): {_first_line(cause)}") from cause
        raise
