"""Which run `resume=true` continues, in which directory, from which checkpoint.

Every run records a fingerprint of its resolved config (its own directory written as `<run>`,
`resume`/`ckpt_path` left out) in `<run dir>/config_fingerprint`, before anything else. Hydra creates
a run's directory before kdlab's code runs, so the choice is made on the command line
(`pinned_directory`, called by `kdlab train` before Hydra starts):

- `kdlab train ... resume=true` (or `ckpt_path=last`) continues in the newest directory beside the one
  this run would get (`<paths.log_dir>/runs/<run name>/`) whose fingerprint is this config's and which
  did not complete (no `results.json`, or one whose status is "failed"); Hydra's `hydra.run.dir` is
  pinned to it. With only completed runs of this config there, the newest is "continued": it reports
  its recorded metrics and trains nothing. With none, the command fails before any work.
- `kdlab train -m ... resume=true` continues the newest multirun under `<paths.log_dir>/multirun/`
  started with the same overrides (Hydra's `multirun.yaml`); `hydra.sweep.dir` is pinned to it, and
  every job runs in its own directory there: completed jobs report their recorded metrics (returned
  to the sweeper) and train nothing, unfinished ones continue, jobs that never started start.

Without `resume=true`, a directory named on the command line that holds a run is not reused: the run
goes to the first free `DIR-run<N>` beside it (`unused_directory`); a directory's name says what the
run changes (`kdlab.run_dirs`).

In its directory, a run continues from `checkpoints/last.ckpt` (written at the end of every epoch) when
there is one, and starts from the beginning when it was killed before its first epoch ended.
`hydra.run.dir=DIR resume=true` (or `hydra.sweep.dir=DIR`) names the directory itself.
"""

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kdlab.distributed import is_worker_process
from kdlab.errors import ConfigError
from kdlab.fingerprint import fingerprint
from kdlab.results import RESULTS_FILE, write_atomic
from kdlab.validate import resolved

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "config_fingerprint"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of a multirun, in its sweep directory
RUN_PLACEHOLDER = "<run>"
_RESUME_KEYS = ("resume", "ckpt_path")


def config_fingerprint(cfg: DictConfig) -> str:
    """Hash of the resolved config with the run directory, Hydra's own node and the resume options left
    out. A value that does not resolve is a `ConfigError` naming its key."""
    config = resolved(OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("hydra", *_RESUME_KEYS)]))
    text = json.dumps(config, sort_keys=True, default=str).replace(str(cfg.paths.output_dir), RUN_PLACEHOLDER)
    return fingerprint(json.loads(text))


def resuming(cfg: DictConfig) -> bool:
    """Whether the run asks to continue (`resume=true` or `ckpt_path=last`)."""
    if cfg.resume and cfg.ckpt_path not in (None, "last"):
        raise ConfigError(f"resume=true continues this config's run in its own directory, ckpt_path={cfg.ckpt_path} starts a new "
                          "run from that checkpoint: give one of them")
    return bool(cfg.resume) or cfg.ckpt_path == "last"


class ForeignRunError(ConfigError):
    """A resumed run's directory holds a run of another config (nothing may be written there)."""


def claim_run_dir(cfg: DictConfig) -> str:
    """Write the config's fingerprint into the run directory (the first file a run writes) and return it.

    A resumed run's directory must hold this config's fingerprint: one of another config is a
    `ForeignRunError` (the directory is left as it is). DDP worker processes only check.
    """
    key = config_fingerprint(cfg)
    path = Path(cfg.paths.output_dir) / FINGERPRINT_FILE
    if resuming(cfg) and path.is_file() and (found := path.read_text().strip()) != key:
        raise ForeignRunError(f"resume=true: {path.parent} holds a run of another config (its {FINGERPRINT_FILE} is {found}, "
                              f"this config's is {key}); resume it with the overrides it was started with, or drop resume=true")
    if not is_worker_process():
        write_atomic(path, key + "\n")
    return key


def completed_metrics(cfg: DictConfig) -> dict[str, float] | None:
    """The recorded metrics of the completed run in this run's directory, when resuming; else None."""
    record = _record(Path(cfg.paths.output_dir))
    if not resuming(cfg) or record is None or record.get("status") != "completed":
        return None
    return record["metrics"]


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint fitting starts from: `ckpt_path` if given, this directory's `last.ckpt` when
    resuming and there is one, else None (from the beginning). Checked whole first
    (`kdlab.checkpoints.check_checkpoint`): a truncated or corrupt file is a `DataError` naming it."""
    from kdlab.checkpoints import check_checkpoint  # torch: only once a run starts

    if cfg.ckpt_path and cfg.ckpt_path != "last":
        return check_checkpoint(cfg.ckpt_path, setting="ckpt_path")
    if not resuming(cfg):
        return None
    last = Path(cfg.paths.output_dir) / LAST_CHECKPOINT
    for leftover in [] if is_worker_process() else last.parent.glob(".*.tmp"):  # a save cut short by the kill
        leftover.unlink(missing_ok=True)
    if not last.is_file():
        log.info("resume=true: %s has no checkpoint yet; training from the beginning in it", last.parents[1])
        return None
    return check_checkpoint(last, setting="resume=true: the run's last checkpoint")


def _record(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# ---- on the command line, before Hydra creates a directory -----------------------------------------
def pinned_directory(overrides: list[str], multirun: bool, config_name: str = "train") -> list[str]:
    """The override pinning Hydra's run directory (`hydra.run.dir=...`; a multirun's `hydra.sweep.dir=...`)
    to the run that these overrides with `resume=true` continue; [] when the overrides name it already.
    `ConfigError` when there is none to continue."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if any(_override_key(override) == key for override in overrides):
        return []
    parsed = OverridesParser.create().parse_overrides(overrides)
    single = [override.input_line for override in parsed if not override.is_sweep_override()]
    with initialize_config_module("kdlab.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=single if multirun else overrides, return_hydra_config=True)
    resuming(cfg)  # resume=true with a ckpt_path is refused first
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = RUN_PLACEHOLDER
    HydraConfig.instance().set_config(cfg)  # for `${hydra:...}` in the config
    if multirun:
        directory = _multirun_to_resume(Path(cfg.hydra.sweep.dir).parent, _task(overrides))
    else:
        directory = _run_to_resume(Path(cfg.hydra.run.dir).parent, config_fingerprint(cfg))
    return [f"{key}={_quoted(str(directory.resolve()))}"]


def unused_directory(overrides: list[str], multirun: bool) -> list[str]:
    """The override moving a run (or sweep) directory named on the command line (`hydra.run.dir=DIR`, a
    multirun's `hydra.sweep.dir=DIR`) that already holds a run to the first free `DIR-run<N>` (N = 2, 3, ...),
    so that a new run never writes into an earlier one's directory; [] when it is free, when none is named,
    and in DDP worker processes (Lightning starts them with the directory rank 0 runs in)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    named = [override.split("=", 1)[1].strip().strip("'\"") for override in overrides if _override_key(override) == key]
    if not named or "${" in named[-1] or is_worker_process():
        return []
    directory = Path(named[-1]).expanduser()
    if not _holds_run(directory):
        return []
    number = 2
    while _holds_run(free := directory.with_name(f"{directory.name}-run{number}")):
        number += 1
    log.warning("%s=%s holds an earlier run: this one runs in %s (resume=true continues the earlier one)", key, directory, free)
    return [f"{key}={_quoted(str(free))}"]


def _holds_run(directory: Path) -> bool:
    return any((directory / marker).exists() for marker in (FINGERPRINT_FILE, MULTIRUN_FILE, ".hydra"))


def _run_to_resume(root: Path, key: str) -> Path:
    runs = [d for d in _subdirectories(root) if _read(d / FINGERPRINT_FILE) == key]
    unfinished = [d for d in runs if (_record(d) or {}).get("status") != "completed"]
    if unfinished or runs:
        chosen = _newest(unfinished or runs, FINGERPRINT_FILE)
        log.info("resume=true: continuing %s", chosen)
        return chosen
    others = [d for d in _subdirectories(root) if (d / FINGERPRINT_FILE).is_file()]
    hint = ""
    if others:
        newest = _newest(others, FINGERPRINT_FILE)
        hint = f" ({len(others)} run(s) there have other configs; the newest, {newest.name}, was started with: {_started_with(newest)})"
    raise ConfigError(f"resume=true: no run of this config was started under {root}{hint}; drop resume=true to start it, "
                      "or name a run directory with hydra.run.dir=DIR")


def _multirun_to_resume(root: Path, task: list[str]) -> Path:
    sweeps = [d for d in _subdirectories(root) if (d / MULTIRUN_FILE).is_file()]
    same = [d for d in sweeps if _multirun_task(d) == task]
    if same:
        chosen = _newest(same, MULTIRUN_FILE)
        log.info("resume=true: continuing the multirun %s", chosen)
        return chosen
    hint = ""
    if sweeps:
        newest = _newest(sweeps, MULTIRUN_FILE)
        started = _multirun_task(newest)
        hint = f" (the newest there, {newest.name}, was started with: {' '.join(started or []) or 'no overrides'})"
    raise ConfigError(f"resume=true: no multirun under {root} was started with {' '.join(task) or 'no overrides'}{hint}; "
                      "repeat the overrides it was started with, or name it with hydra.sweep.dir=DIR")


def _task(overrides: Iterable[str]) -> list[str]:
    """The job's overrides as Hydra records them (`hydra.overrides.task`), without `resume`/`ckpt_path=last`."""
    return [o for o in overrides if not _override_key(o).startswith("hydra.") and not _is_resume(o)]


def _is_resume(override: str) -> bool:
    key = _override_key(override)
    return key == "resume" or (key == "ckpt_path" and override.split("=", 1)[1].strip() == "last")


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].strip().lstrip("+~")


def _multirun_task(sweep_dir: Path) -> list[str] | None:
    try:
        return _task(OmegaConf.load(sweep_dir / MULTIRUN_FILE).hydra.overrides.task)
    except Exception:  # noqa: BLE001 - a damaged multirun.yaml is not a multirun to resume
        return None


def _started_with(run_dir: Path) -> str:
    try:
        return " ".join(_task(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))) or "no overrides"
    except Exception:  # noqa: BLE001 - unreadable: say so rather than fail the message
        return "(its .hydra/overrides.yaml is unreadable)"


def _subdirectories(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []


def _newest(directories: list[Path], marker: str) -> Path:
    return max(directories, key=lambda d: (d / marker).stat().st_mtime)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quoted(value: str) -> str:
    """`value` as a quoted Hydra override value."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ConfigError(f"cannot pass the directory {value} to Hydra (it holds both quote characters): rename it")
