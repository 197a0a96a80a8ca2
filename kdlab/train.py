"""`kdlab train`: the Hydra application (also runnable as `python -m kdlab.train`).

Methods are the `method` config group, the root config's default being `kd`. Users select one with
`+method=NAME` (the syntax of every kdlab command, sweep and W&B sweep file); `main` rewrites that
to the group override `method=NAME` before Hydra reads the command line, so `kdlab train`,
`python -m kdlab.train` and Lightning's DDP re-launch of either accept both spellings.

`resume=true` (or `ckpt_path=last`) continues a run in its own directory: `main` pins Hydra's run
(or sweep) directory to it before Hydra creates one (`kdlab.resume.pinned_directory`).

kdlab's own errors (`kdlab.errors.KdlabError`: a bad config value, input file or storage) are printed
as the one line `kdlab: <message>`, with no traceback, and the command exits with status 1; the
traceback goes to the run's `train.log`, and to the terminal instead with `HYDRA_FULL_ERROR=1`. A
multirun's failed job is reported by Hydra at the end of the sweep, in its compact form (Hydra's
"Error executing job" line, then `kdlab: <message>`). Other errors keep Hydra's traceback.
"""

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

import kdlab.conf  # noqa: F401  (registers the `divergence` config group from the divergence registry)
from kdlab.errors import KdlabError, StorageError

log = logging.getLogger(__name__)
_ADD_METHOD = re.compile(r"^\+\+?method=")


class KdlabExit(CompactHydraException):
    """A kdlab error of a multirun's job, as Hydra reports it at the end of the sweep (a compact error:
    its message, without a traceback), so that sweepers see the job fail."""


_FAILED: list[str] = []  # the kdlab errors of this process's single run, printed when they happened


def _full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def method_overrides(overrides: list[str]) -> list[str]:
    """The overrides with `+method=X` (or `++method=X`) written as the group override `method=X`."""
    return [_ADD_METHOD.sub("method=", override) for override in overrides]


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _train(cfg: DictConfig) -> float | None:
    """Run one job; return `cfg.optimized_metric` for a sweeper (Optuna maximises or minimises it)."""
    try:
        metrics = job(cfg)
    except KdlabError as error:
        _log_to_files(error)
        if _full_errors():
            raise
        if HydraConfig.get().mode != RunMode.RUN:
            raise KdlabExit(f"kdlab: {error}") from error
        print(f"kdlab: {error}", file=sys.stderr)
        _FAILED.append(str(error))
        return None
    if cfg.optimized_metric not in metrics:
        log.warning("optimized_metric=%s was not logged by this run; it logged: %s", cfg.optimized_metric, ", ".join(metrics))
    return metrics.get(cfg.optimized_metric)


def job(cfg: DictConfig) -> dict[str, float]:
    """One job of `kdlab train` on its composed config: the run's fingerprint first, then `kdlab.run.run`."""
    from kdlab.resume import claim_run_dir

    try:
        claim_run_dir(cfg)  # first: a run killed while Lightning is imported is found by resume=true
    except KdlabError:
        pass  # `run` meets it again, records the failure (unless the directory is another run's) and raises it
    from kdlab.run import run  # here: `--help` and `--cfg job` answer without loading Lightning

    return run(cfg)


def _log_to_files(error: BaseException) -> None:
    """The error with its traceback, in the job's log files (`train.log`) only."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s: %s", (type(error).__name__, error),
                            (type(error), error, error.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class CreateOutputDir(Callback):
    """Creates the run's (or the multirun's) directory before Hydra does, so that a directory that
    cannot be written is one line naming it and the settings that choose it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._create(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._create(config, "hydra.sweep.dir")

    @staticmethod
    def _create(config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # the directory's `${hydra:...}` interpolations read it
        directory = Path(str(config.hydra.run.dir if key == "hydra.run.dir" else config.hydra.sweep.dir))
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as error:
            _exit(StorageError(f"cannot create the run directory {directory} ({error.strerror or error}): set KDLAB_OUTPUTS "
                               f"(or paths.log_dir) to a writable directory, or choose the directory with {key}=DIR"))


def main() -> None:
    overrides = method_overrides(sys.argv[1:])
    try:
        overrides += resume_overrides(overrides)
    except KdlabError as error:
        _exit(error)
    sys.argv = [sys.argv[0], *overrides]
    _train()
    if _FAILED:
        sys.exit(1)


def _exit(error: KdlabError) -> None:
    """End the process on a kdlab error met before a job runs: its one line, exit status 1 (its
    traceback too under HYDRA_FULL_ERROR=1)."""
    if _full_errors():
        raise error
    print(f"kdlab: {error}", file=sys.stderr)
    sys.exit(1)


def resume_overrides(argv: list[str]) -> list[str]:
    """The override that pins the run (or sweep) directory `resume=true` continues, or, without it, moves a
    named directory that holds a run to a free one (`unused_directory`); [] when the command only asks
    Hydra for help or for the config."""
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException

    from kdlab.resume import pinned_directory, unused_directory

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return []
    if not any(_asks_resume(override) for override in args.overrides):
        return unused_directory(args.overrides, multirun=args.multirun)  # a named directory holding a run is not reused
    if args.config_path or args.config_dir:
        raise KdlabError("resume=true finds the run to continue in kdlab's own configs: with --config-path/--config-dir, "
                         "name its directory with hydra.run.dir=DIR (a multirun's with hydra.sweep.dir=DIR)")
    try:
        return pinned_directory(args.overrides, multirun=args.multirun, config_name=args.config_name or "train")
    except HydraException:
        return []  # overrides Hydra cannot compose: Hydra reports them itself


def _asks_resume(override: str) -> bool:
    key, _, value = override.partition("=")
    value = value.strip().strip("'\"").lower()
    return (key.lstrip("+") == "resume" and value in ("true", "yes", "1", "on")) or (key.lstrip("+") == "ckpt_path" and value == "last")


if __name__ == "__main__":
    main()
