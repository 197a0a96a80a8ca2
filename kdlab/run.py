"""One run, start to end: compose -> teacher -> fit -> test -> results.json -> summary.

`run(cfg)` is what `kdlab train` calls for every job of a run or a multirun.
"""

import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from kdlab.checks import check_teacher_source
from kdlab.distributed import is_worker_process
from kdlab.loggers import finish_wandb_run
from kdlab.results import RESULTS_FILE, environment_versions, write_json_atomic
from kdlab.resume import record_fingerprint, resume_checkpoint
from kdlab.summary import print_summary
from kdlab.teachers import CachedTeacher, load_teacher

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate what `cfg` describes; write `results.json`; return the final metrics.

    A run that raises still leaves a `results.json`, with `"status": "failed"` and the error, so
    that reports list it instead of silently missing it.
    """
    try:
        return _run(cfg)
    except Exception as error:
        if not is_worker_process():
            write_json_atomic(
                Path(cfg.paths.output_dir) / RESULTS_FILE,
                {**_run_identity(cfg), "status": "failed", "error": f"{type(error).__name__}: {error}",
                 "versions": environment_versions(), "config": OmegaConf.to_container(cfg, resolve=True)},
            )
        raise


def _run_identity(cfg: DictConfig) -> dict:
    return {
        "run_name": cfg.run_name,
        "method": cfg.method,
        "divergence": cfg.divergence.name,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
    }


def _run(cfg: DictConfig) -> dict[str, float]:
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    record_fingerprint(cfg)
    ckpt_path = resume_checkpoint(cfg)

    module_class = get_class(cfg.module._target_)
    check_teacher_source(cfg.method, module_class.teacher_role, cfg.teacher.ckpt_path)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.dataset.datamodule)
    student = instantiate(cfg.model.student)
    teacher_model = instantiate(cfg.model.teacher) if module_class.teacher_role else None
    objective = instantiate(cfg.objective)
    module_class.check_models(datamodule, cfg.dataset, student, teacher_model, objective)

    teacher = load_teacher(cfg, datamodule, teacher_model) if module_class.teacher_role == "frozen" else None
    L.seed_everything(cfg.seed, workers=True)  # training repeats exactly, teacher trained now or cached
    module = instantiate(
        cfg.module,
        model=student,
        objective=objective,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.scheduler else None,
        num_classes=cfg.dataset.num_classes,
        **({"teacher": teacher_model} if teacher_model is not None else {}),
    )
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
    for logger in trainer.loggers:
        logger.log_hyperparams(_loggable_config(cfg, teacher))

    try:
        if ckpt_path:
            log.info("Resuming from %s", ckpt_path)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        fit_metrics = dict(trainer.callback_metrics)  # testing resets them
        trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        finish_wandb_run()

    metrics = {name: float(value) for name, value in sorted((fit_metrics | trainer.callback_metrics).items())}
    if trainer.is_global_zero:
        write_json_atomic(
            output_dir / RESULTS_FILE,
            {
                **_run_identity(cfg),
                "status": "completed",
                "metrics": metrics,
                "teacher": _teacher_record(teacher),
                "resumed_from": str(ckpt_path) if ckpt_path else None,
                "epochs": trainer.current_epoch,
                "duration_s": round(time.time() - started, 2),
                "versions": environment_versions(),
                "config": OmegaConf.to_container(cfg, resolve=True),
            },
        )
        print_summary(cfg.run_name, metrics, output_dir)
    return metrics


def _teacher_record(teacher: CachedTeacher | None) -> dict | None:
    if teacher is None:
        return None
    return {"source": teacher.source, "path": str(teacher.path), "fingerprint": teacher.fingerprint, "metrics": teacher.metrics}


def _loggable_config(cfg: DictConfig, teacher: CachedTeacher | None) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True)
    config["teacher_record"] = _teacher_record(teacher)
    return config
