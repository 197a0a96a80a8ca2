"""Experiment loggers: W&B that never prompts or waits for a network, and groups a grid's runs.

W&B logs offline (to `<run dir>/wandb/`, for a later `wandb sync`) unless `WANDB_MODE=online` or
`logger.wandb.mode=online` asks for online; then a server that does not answer within a few seconds
means offline too, with one warning (`reachable_mode`).

`logger=tensorboard` is Lightning's `TensorBoardLogger` (event files in `<run dir>/tensorboard/`);
loggers combine as a list of the group's options, `logger=[wandb,tensorboard]`; the CSV logger is
always among them (resume and reports read its rows).

Every W&B run of a multirun (or of a W&B sweep) shares one group, is tagged with its method,
divergence, model and dataset, carries the resolved config flattened to dotted keys
(`objective.temperature`, ...) so that W&B's tables and parallel-coordinates panels can use any
of them, and names the teacher it was distilled from with the tag `teacher:<fingerprint>`; the
teacher's own training is a W&B run with the same tag (`kdlab.teachers`).
"""

import configparser
import functools
import importlib.util
import logging
import os
import socket
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from kdlab.distributed import is_worker_process
from kdlab.errors import ConfigError
from kdlab.fingerprint import fingerprint

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")
# wandb's own spellings, accepted as they are: dryrun (offline), run (online), shared (online, several writers).
_WANDB_ALIASES = ("dryrun", "run", "shared")
_NETWORK_MODES = ("online", "run", "shared")
DEFAULT_SERVER = "https://api.wandb.ai"
_WARNED: set[tuple[str, int]] = set()  # the servers this process has said it cannot reach


def wandb_mode(mode: str = "auto") -> str:
    """The W&B mode a run asks for: `mode` itself unless it is `auto` (the default of
    `logger.wandb.mode`), which means `WANDB_MODE` if that is set and `offline` otherwise.

    Only an explicit `online` turns W&B online: an API key alone (`WANDB_API_KEY`, or the `~/.netrc`
    entry `wandb login` writes) does not, so that a job on a node without network never waits for one.
    An empty `WANDB_MODE` (`WANDB_MODE= kdlab train`, or an unset variable in an `export` line) means
    unset; it is removed from the environment, where wandb itself would reject it. A value W&B does not
    know, in `mode` or in `WANDB_MODE`, is a `ConfigError` naming the valid ones.
    """
    env = os.environ.get("WANDB_MODE")
    if env == "":
        del os.environ["WANDB_MODE"]
    elif env is not None and env not in (*WANDB_MODES, *_WANDB_ALIASES):
        raise ConfigError(f"WANDB_MODE={env!r} is not a W&B mode: use {', '.join(WANDB_MODES)} (or unset it: offline)")
    if mode == "auto":
        return env or "offline"
    if mode not in (*WANDB_MODES, *_WANDB_ALIASES):
        raise ConfigError(f"logger.wandb.mode={mode!r} is not a W&B mode: use auto, {', '.join(WANDB_MODES)}")
    return mode


def check_tensorboard() -> None:
    """`ConfigError` unless Lightning's `TensorBoardLogger` (`logger=tensorboard`) can write: it needs
    `tensorboard` (a kdlab dependency) or `tensorboardX` installed."""
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        raise ConfigError("logger=tensorboard needs tensorboard, which is not installed here: pip install tensorboard "
                          "(or log with logger=csv|wandb)")


def reachable_mode(mode: str = "auto", connect_timeout: float = 5.0, save_dir: str = ".") -> str:
    """`wandb_mode(mode)`, or `offline` when that mode needs W&B's server and the server does not
    accept a TCP connection within `connect_timeout` seconds (checked once per process, before
    `wandb.init`, which would otherwise wait minutes and crash; one warning line says so).

    The server is `wandb_server()`, reached through the `https_proxy`/`http_proxy` the environment
    names (unless `no_proxy` exempts it), as wandb reaches it. DDP worker processes skip the check:
    only rank 0 logs to W&B.
    """
    chosen = wandb_mode(mode)
    if chosen not in _NETWORK_MODES or is_worker_process():
        return chosen
    server = wandb_server()
    host, port = _endpoint(server)
    problem = _unreachable(host, port, connect_timeout)
    if problem is None:
        return chosen
    if (host, port) not in _WARNED:  # once per process: a run's teacher and student loggers both ask
        _WARNED.add((host, port))
        via = "" if urlsplit(server).hostname == host else f" (through the proxy {host}:{port})"
        log.warning("W&B server %s%s: %s; logging offline instead (upload later: wandb sync %s)",
                    server, via, problem, Path(save_dir) / "wandb" / "offline-run-*")
    return "offline"


def wandb_server() -> str:
    """The W&B server: `WANDB_BASE_URL`, else the `base_url` that `wandb login --host` saved in W&B's
    settings file (`$WANDB_CONFIG_DIR/settings`, default `~/.config/wandb/settings`), else api.wandb.ai."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    settings = configparser.ConfigParser()
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", "~/.config/wandb")).expanduser()
    try:
        settings.read(config_dir / "settings")
    except configparser.Error:
        return DEFAULT_SERVER
    return settings.get("default", "base_url", fallback=DEFAULT_SERVER)


def _endpoint(url: str) -> tuple[str, int]:
    """The (host, port) a connection to `url` opens: its own, or its proxy's."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"the W&B server {url!r} (WANDB_BASE_URL or wandb's settings) is not a URL: use e.g. {DEFAULT_SERVER}")
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


@functools.cache
def _unreachable(host: str, port: int, timeout: float) -> str | None:
    """None when `host:port` accepts a TCP connection within `timeout` seconds, else why not.

    The connection (name resolution included, which has no timeout of its own) runs in a daemon
    thread that is given up after `timeout` seconds.
    """
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(str(error.strerror or error))

    thread = threading.Thread(target=connect, name="kdlab-wandb-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def run_group(group: str | None = "auto") -> str | None:
    """The W&B group of this run: `group` itself unless it is `auto`, which means the W&B sweep
    (`sweep-<id>`, under `wandb agent`) or the Hydra multirun (`multirun-<its directory name>`) the
    run belongs to, and no group for a single run."""
    if group != "auto":
        return group
    if os.environ.get("WANDB_SWEEP_ID"):
        return f"sweep-{os.environ['WANDB_SWEEP_ID']}"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"multirun-{Path(HydraConfig.get().sweep.dir).name}"
    return None


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}, "c": [2]}` -> `{"a.b": 1, "c": [2]}`: nested mappings become dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten_config(value, f"{name}.")
        else:
            flat[name] = value
    return flat


class KdlabWandbLogger(WandbLogger):
    """Lightning's `WandbLogger`, logging the run's config flattened to dotted keys and tagging
    the run `teacher:<fingerprint>` when the config's `teacher_record` names a cached teacher."""

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:  # type: ignore[override]
        config = flatten_config(params)
        super().log_hyperparams(config)
        teacher = config.get("teacher_record.fingerprint")
        if teacher:
            self.experiment.tags = (*self.experiment.tags, f"teacher:{teacher}")


def wandb_logger(
    mode: str = "auto",
    group: str | None = "auto",
    save_dir: str = ".",
    run_id: str | None = None,
    connect_timeout: float = 5.0,
    **kwargs: Any,
) -> KdlabWandbLogger:
    """A W&B logger in the mode `reachable_mode(mode, connect_timeout)` picks (offline unless online is
    asked for and the server answers), in the group `run_group(group)` picks.

    The W&B run id is `run_id`, else the one `wandb agent` assigned (`WANDB_RUN_ID`), else
    `dir_run_id(save_dir)`; runs are resumable (`resume="allow"`), so a SLURM job requeued into
    the same directory continues the same W&B run. Other keyword arguments go to `WandbLogger`
    and `wandb.init` (project, name, tags, job_type, ...).
    """
    run_id = run_id or os.environ.get("WANDB_RUN_ID") or dir_run_id(save_dir)
    return KdlabWandbLogger(
        mode=reachable_mode(mode, connect_timeout, save_dir), group=run_group(group), save_dir=save_dir, id=run_id, resume="allow", **kwargs
    )


def dir_run_id(run_dir: str | Path) -> str:
    """The W&B run id of the run that writes into `run_dir`: a hash of its absolute path."""
    return fingerprint({"run_dir": str(Path(run_dir).resolve())})


def finish_wandb_run() -> None:
    """Close the W&B run, if any, so that the next job of a multirun starts its own run."""
    if wandb.run is not None:
        wandb.finish()
