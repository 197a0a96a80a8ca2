"""One run, start to end: check -> objective -> data, models, teacher -> fit -> test -> results.json -> summary.

`run(cfg)` is what `kdlab train` calls for every job of a run or a multirun. The config is checked
first (`kdlab.validate`: one line naming the key, before any data or model is built). A run with
`resume=true` continues in its own directory (`kdlab.resume`) from its last checkpoint, and repeats
the uninterrupted run exactly (`kdlab.resumable`); one that already completed reports its recorded
metrics and trains nothing. The run's record
(results.json, W&B tags and hyperparameters, what `kdlab report` reads) is taken from what was
built: `method` and `regime` from the presets Hydra composed and the module class built,
`divergence` and `divergence_params` from the objective's `used_divergence()`, `objective` from the
built objective's class and the arguments it was built with.
"""

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdlab.checkpoints import AtomicCheckpointIO
from kdlab.conf import label
from kdlab.distributed import is_worker_process
from kdlab.divergences import Divergence, get
from kdlab.errors import ConfigError, KdlabError
from kdlab.loggers import finish_wandb_run
from kdlab.methods import asked_divergence, check_divergence
from kdlab.modules.base import TrainingModule
from kdlab.objectives.base import Objective
from kdlab.results import RESULTS_FILE, environment_versions, write_json_atomic, write_labels
from kdlab.resumable import ResumableRun
from kdlab.resume import ForeignRunError, claim_run_dir, completed_metrics, resume_checkpoint
from kdlab.summary import print_summary
from kdlab.teacher_outputs import replay_teacher_outputs
from kdlab.teachers import CACHED_ROLES, CachedTeacher, ignored_options, load_teacher
from kdlab.validate import build, recordable, validate

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate what `cfg` describes; write `results.json`; return the final metrics.

    A run that raises still leaves a `results.json`, with `"status": "failed"` and the error, so
    that reports list it instead of silently missing it; one that failed before its objective was
    built records the divergence it asked for. When that record cannot be written (a full disk), the
    run's own error is raised, not the record's.
    """
    record = requested(cfg)
    try:
        return _run(cfg, record)
    except ForeignRunError:
        raise  # the directory is another run's: nothing is recorded there
    except Exception as error:
        if not is_worker_process():
            _record_failure(cfg, record, error)
        raise


def _record_failure(cfg: DictConfig, record: dict[str, Any], error: Exception) -> None:
    """`results.json` with status "failed"; a record that cannot be written is logged, not raised."""
    path: Path | str = f"the run directory's {RESULTS_FILE}"
    try:
        path = Path(cfg.paths.output_dir) / RESULTS_FILE
        write_json_atomic(path, {**record, "status": "failed", "error": f"{type(error).__name__}: {error}",
                                 "versions": environment_versions(), "config": recordable(cfg)})
    except Exception as problem:  # noqa: BLE001 - the run's error is the one to report
        log.error("The failure of this run could not be recorded in %s: %s", path, problem)


def composed_method() -> str:
    """The method preset Hydra composed (`hydra.runtime.choices.method`)."""
    if not HydraConfig.initialized():
        raise ConfigError("kdlab.run.run needs a config composed by Hydra (kdlab train, or hydra.compose with return_hydra_config=True)")
    return HydraConfig.get().runtime.choices["method"]


def requested(cfg: DictConfig) -> dict[str, Any]:
    """The run's identity as composed, before anything is built (`build_objective` fills in the rest).
    A value that does not resolve (an unset `${oc.env:...}`) is recorded as None; `validate` names it."""
    def value(read: Any) -> Any:
        try:
            return read()
        except Exception:  # noqa: BLE001 - record what can be recorded
            return None

    name, params = value(lambda: asked_divergence(cfg.divergence)) or (None, {})
    return {
        "run_name": value(lambda: cfg.run_name),
        "method": value(composed_method),
        "regime": None,
        "divergence": name,
        "divergence_params": params if name is not None else None,
        "objective": None,
        "model": value(lambda: cfg.model.name),
        "dataset": value(lambda: cfg.dataset.name),
        "seed": value(lambda: cfg.seed),
        "ignored": [],  # the teacher options this method does not use (kdlab.teachers.ignored_options)
    }


def build_divergence(node: DictConfig) -> Divergence:
    """`kdlab.divergences.get(name, **parameters)` of the composed `divergence` node."""
    name, params = asked_divergence(node)
    try:
        return get(name, **params)
    except ValueError as error:
        raise ConfigError(f"divergence={name}: {error}") from None


def build_objective(cfg: DictConfig, method: str) -> tuple[Objective, dict[str, Any]]:
    """The objective of `cfg` and its record (`divergence`, `divergence_params`, `objective`).

    Fails with a `ConfigError`, before any data or model is built, when the asked divergence does not
    fit the objective's slot. Only an objective with an open slot receives a built `Divergence`.
    """
    objective_class = get_class(cfg.objective._target_)
    check_divergence(method, objective_class, get_class(cfg.module._target_), cfg.divergence)
    divergence = build_divergence(cfg.divergence) if objective_class.divergence_slot.receives_divergence else None
    # A partial, then the call: Hydra would turn a dataclass argument such as the Divergence into a config node.
    try:
        objective = instantiate(cfg.objective, _partial_=True)(**({"divergence": divergence} if divergence is not None else {}))
    except (ValueError, TypeError) as error:
        if isinstance(error, KdlabError):
            raise
        raise ConfigError(f"objective ({cfg.objective._target_}): {error}") from error
    used = objective.used_divergence()
    if label(used.name if used else None) != label(cfg.divergence.name):  # the run name, composed before, says cfg's
        raise RuntimeError(f"{type(objective).__name__} computes with {used} but the config says divergence={cfg.divergence.name}")
    arguments = {key: value for key, value in OmegaConf.to_container(cfg.objective, resolve=True).items() if key != "_target_"}
    if divergence is not None:
        arguments["divergence"] = divergence.record()
    return objective, {
        "divergence": used.name if used else None,
        "divergence_params": dict(used.params) if used else None,
        "objective": {"class": qualified_name(type(objective)), "arguments": arguments},
    }


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def wandb_tags(record: dict[str, Any]) -> list[str]:
    """W&B tags from the run's record: method, divergence (or none), model, dataset, seed<N>."""
    return [record["method"], label(record["divergence"]), record["model"], record["dataset"], f"seed{record['seed']}"]


def build_trainer(cfg: DictConfig, tags: list[str]) -> tuple[L.Trainer, ResumableRun]:
    """The Trainer every `kdlab train` job fits with: `cfg.trainer`, the loggers of `cfg.logger` (W&B's
    tagged `tags`), the callbacks of `cfg.callbacks` and `ResumableRun` (returned too: it holds the fit's
    metrics across a resume), checkpoints written atomically. `benchmarks/bench_loop.py` times this Trainer."""
    loggers = [instantiate(node, **({"tags": tags} if key == "wandb" else {})) for key, node in cfg.logger.items()]
    resumable = ResumableRun(cfg.seed)
    resumable.keep_earlier_logs(loggers)  # before the loggers start (the CSV logger deletes what it finds)
    callbacks = [*(instantiate(callback) for callback in cfg.callbacks.values()), resumable]
    return instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, plugins=[AtomicCheckpointIO()]), resumable


def build_models(cfg: DictConfig, objective: Objective) -> tuple[L.LightningDataModule, nn.Module, nn.Module | None]:
    """The datamodule, the run's model (`model.student`; `model.teacher` for a regime that evaluates the
    teacher) and the teacher model beside it (None for a regime without one), checked against each
    other (`check_models`). The teacher model has no trained weights yet (`kdlab.teachers` gives them)."""
    module_class = get_class(cfg.module._target_)
    role = module_class.teacher_role
    datamodule = build(cfg.dataset.datamodule, "dataset.datamodule")
    own = "teacher" if role == "evaluated" else "student"  # +method=teacher: the run's model is the teacher
    student = build(cfg.model[own], f"model.{own}")
    teacher_model = build(cfg.model.teacher, "model.teacher") if role and role != "evaluated" else None
    module_class.check_models(datamodule, cfg.dataset.num_classes, student, teacher_model, objective)
    return datamodule, student, teacher_model


def build_module(cfg: DictConfig, student: nn.Module, objective: Objective, teacher_model: nn.Module | None) -> TrainingModule:
    """The regime `cfg.module` around the built models and objective, with the run's optimiser and schedule."""
    return instantiate(
        cfg.module,
        model=student,
        objective=objective,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.scheduler else None,
        num_classes=cfg.dataset.num_classes,
        **({"teacher": teacher_model} if teacher_model is not None else {}),
    )


def _run(cfg: DictConfig, record: dict[str, Any]) -> dict[str, float]:
    started = time.time()
    record["method"] = record["method"] or composed_method()  # outside Hydra: the error saying so
    claim_run_dir(cfg)  # an unresolvable value is one line here
    output_dir = Path(cfg.paths.output_dir)
    if (done := completed_metrics(cfg)) is not None:
        log.info("resume=true: %s already completed; its recorded metrics stand, nothing is trained", output_dir)
        print_summary(cfg.run_name, done, output_dir)
        return done
    validate(cfg, record["method"])  # first: every bad value is one line here, before anything is built
    objective, built = build_objective(cfg, record["method"])
    record |= built
    module_class = get_class(cfg.module._target_)
    role = module_class.teacher_role
    record["ignored"] = ignored_options(role, cfg.teacher.ckpt_path, HydraConfig.get().overrides.task)
    if record["ignored"]:
        log.warning("+method=%s does not use %s: ignored", record["method"], ", ".join(record["ignored"]))
    ckpt_path = resume_checkpoint(cfg)

    L.seed_everything(cfg.seed, workers=True)
    datamodule, student, teacher_model = build_models(cfg, objective)
    if (labels := getattr(datamodule, "labels", None)) is not None and not is_worker_process():
        write_labels(output_dir, labels)  # the class names of a text classifier's data, by id (labels.json)

    teacher = load_teacher(cfg, datamodule, teacher_model or student) if role in CACHED_ROLES else None
    L.seed_everything(cfg.seed, workers=True)  # training repeats exactly, teacher trained now or cached
    module = build_module(cfg, student, objective, teacher_model)
    record["regime"] = qualified_name(type(module))
    trainer, resumable = build_trainer(cfg, wandb_tags(record))
    if role == "frozen":  # teacher.outputs.views > 0: training batches replay the teacher's cached outputs
        teacher.outputs = replay_teacher_outputs(cfg, datamodule, teacher, trainer.strategy.root_device)
    for logger in trainer.loggers:
        logger.log_hyperparams(_loggable_config(cfg, teacher, record))

    try:
        if ckpt_path:
            log.info("Resuming from %s", ckpt_path)
        if role == "evaluated":  # the cache trained (or held) the teacher: it is evaluated, not fitted
            trainer.validate(module, datamodule=datamodule, verbose=False)
            fit_metrics = dict(trainer.callback_metrics)
        else:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            fit_metrics = resumable.fit_metrics(trainer)  # testing resets the trainer's
        trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        finish_wandb_run()

    metrics = {name: float(value) for name, value in sorted((fit_metrics | trainer.callback_metrics).items())}
    if trainer.is_global_zero:
        write_json_atomic(
            output_dir / RESULTS_FILE,
            {
                **record,
                "status": "completed",
                "metrics": metrics,
                "teacher": _teacher_record(teacher),
                "teacher_outputs": getattr(module, "teacher_outputs_record", None),  # LM top-k cache (kdlab.lm_teacher_outputs)
                "resumed_from": str(ckpt_path) if ckpt_path else None,
                "epochs": trainer.current_epoch,
                "duration_s": round(time.time() - started, 2),
                "versions": environment_versions(),
                "config": OmegaConf.to_container(cfg, resolve=True),
            },
        )
        print_summary(cfg.run_name, metrics, output_dir, model="teacher" if role == "evaluated" else "student")
    return metrics


def _teacher_record(teacher: CachedTeacher | None) -> dict | None:
    if teacher is None:
        return None
    return {"source": teacher.source, "path": str(teacher.path), "fingerprint": teacher.fingerprint, "metrics": teacher.metrics,
            "outputs": teacher.outputs}


def _loggable_config(cfg: DictConfig, teacher: CachedTeacher | None, record: dict[str, Any]) -> dict:
    """The resolved config, the teacher's record (`teacher_record`) and the run's (`record`: method,
    regime, divergence, divergence_params, objective), as the loggers' hyperparameters."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["teacher_record"] = _teacher_record(teacher)
    config["record"] = {key: record[key] for key in ("method", "regime", "divergence", "divergence_params", "objective")}
    return config
