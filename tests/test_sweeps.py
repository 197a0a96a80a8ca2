"""Optuna presets, W&B sweep files, the SLURM preset and one-GPU-per-job assignment:
every command they would run composes, and the launchers run on CPU where they can without a cluster."""

import itertools
import json
import multiprocessing
import os
import re
import signal
from pathlib import Path

import pytest
import yaml
from conftest import kdlab
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from kdlab.devices import OneGpuPerJob, check_launcher, claim_gpu
from kdlab.run import build_objective
from kdlab.train import method_overrides

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "kdlab" / "conf"
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def compose_with_hydra(overrides: list[str], tmp_path: Path) -> DictConfig:
    """The job config with its `hydra` node, as a launcher sees it (`+method=X` read as `kdlab train` reads it)."""
    GlobalHydra.instance().clear()
    with initialize_config_module("kdlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*method_overrides(overrides), f"hydra.sweep.dir={tmp_path}", f"hydra.run.dir={tmp_path}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def one_seed(axes: dict[str, list]) -> dict[str, list]:
    """The sweep axes with `seed` cut to its first value: seeds change no config group, so composing
    every other combination once proves every job valid (at a third of the cost of a 3-seed grid)."""
    return {key: values[:1] if key == "seed" else values for key, values in axes.items()}


def assert_job(overrides: list[str], tmp_path: Path, fixed: tuple[str, ...] = ()) -> DictConfig:
    """Compose one job of a sweep (`fixed` + `overrides`), check that each override reached the config and
    that the job's objective builds as `kdlab.run` builds it (a method that cannot take the divergence fails here)."""
    cfg = compose_with_hydra([*fixed, *overrides], tmp_path)
    build_objective(cfg, cfg.hydra.runtime.choices.method)
    for override in overrides:
        key, value = override.lstrip("+").split("=", 1)
        actual = {"method": cfg.hydra.runtime.choices.method, "divergence": cfg.divergence.name}.get(key, OmegaConf.select(cfg, key))
        assert str(actual) == value or float(actual) == pytest.approx(float(value)), (override, actual)
    return cfg


# ---- Optuna presets (hparams_search=*) --------------------------------------------------------------

SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("search", SEARCHES)
def test_optuna_preset_searches_real_keys(search: str, tmp_path: Path) -> None:
    """Every searched key exists in the config of a trial (which gets the preset's fixed `method`)."""
    sweeper = compose_with_hydra([f"hparams_search={search}"], tmp_path).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    fixed = [f"{key}={value}" for key, value in sweeper.params.items() if "(" not in str(value)]
    assert fixed[0].startswith("method="), "a preset names the method it tunes"
    cfg = assert_job(fixed, tmp_path, fixed=(f"hparams_search={search}",))
    assert not cfg.optimized_metric.startswith("test/"), "a search must never select on test metrics"
    for key in sweeper.params:
        assert key == "method" or OmegaConf.select(cfg, key) is not None, f"{search} searches {key}, which the config lacks"


# ---- W&B sweep files (sweeps/*.yaml) ----------------------------------------------------------------


def agent_commands(path: Path) -> list[list[str]]:
    """The commands `wandb agent` would run for this sweep file: every grid point (one seed), or for
    random/bayes the end points of each range — built with wandb's own command-construction functions."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args, load_sweep_config

    sweep = load_sweep_config(str(path))
    choices = {}
    for name, spec in sweep["parameters"].items():
        choices[name] = [spec["value"]] if "value" in spec else spec.get("values") or [spec["min"], spec["max"]]
    commands = []
    for combo in itertools.product(*one_seed(choices).values()):
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in zip(choices, combo)}})
        macros = {**args, "env": ["/usr/bin/env"], "program": [sweep.get("program", "")], "interpreter": ["python"]}
        command = []
        for part in create_sweep_command(list(sweep["command"])):  # as wandb_agent.Agent._run_job does
            command += macros.get(part[2:-1], []) if part.startswith("${") and part.endswith("}") else [part]
        commands.append(command)
    return commands


def test_there_are_wandb_sweeps() -> None:
    assert {p.stem for p in SWEEPS} >= {"grid_digits", "kd_bayes"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_wandb_sweep_file_commands_compose(path: Path, tmp_path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes") and sweep["metric"]["goal"] in ("maximize", "minimize")
    if sweep["method"] != "grid":
        assert not sweep["metric"]["name"].startswith("test/"), "a search must never select on test metrics"
    commands = agent_commands(path)
    assert commands
    for command in commands:
        assert command[:3] == ["/usr/bin/env", "kdlab", "train"], command
        assert_job(command[3:], tmp_path)


# ---- SLURM (hardware=slurm, Hydra's submitit launcher) ----------------------------------------------


def test_slurm_preset_writes_the_sbatch_script_lightning_can_requeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sbatch script the launcher would submit for 2 nodes x 4 GPUs: one task per GPU, and SLURM's
    warning signal is the one Lightning's SLURM auto-requeue listens to."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = compose_with_hydra(["hardware=slurm", "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.partition=gpu"], tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    fake_bin = tmp_path / "bin"  # submitit looks for `srun` before it builds a script; nothing is submitted
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    # The same translation of launcher keys to executor parameters as hydra_submitit_launcher's launch().
    executor = submitit.AutoExecutor(folder=launcher.pop("submitit_folder"), cluster="slurm",
                                     slurm_max_num_timeout=launcher.pop("max_num_timeout"))
    launcher.pop("_target_")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.items()})
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--requeue", "--signal=USR1@120"):
        assert f"#SBATCH {line}\n" in script, line

    # Inside such a job Lightning picks SLURMEnvironment itself, with auto-requeue on that signal.
    from lightning import Trainer
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for name, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7",
                        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}.items():
        monkeypatch.setenv(name, value)
    environment = Trainer(accelerator="cpu", devices=1, logger=False)._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert environment.requeue_signal == signal.Signals[f"SIG{cfg.hydra.launcher.additional_parameters.signal.split('@')[0]}"]


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_multirun(outputs: Path) -> None:
    """Hydra's submitit launcher (local executor: the SLURM code path minus sbatch) runs kdlab jobs."""
    kdlab("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "+method=scratch", "seed=0,1",
          "trainer.max_epochs=1", "logger=none", outputs=outputs)
    results = [json.loads(p.read_text()) for p in sorted(outputs.glob("multirun/*/*/results.json"))]
    assert [(r["status"], r["seed"]) for r in results] == [("completed", 0), ("completed", 1)]
    assert list(outputs.glob("multirun/*/.submitit/*/*_result.pkl")), "the jobs ran through submitit"


# ---- One GPU per job (hardware=local_gpus) ----------------------------------------------------------


def test_local_gpus_preset_composes(tmp_path: Path) -> None:
    cfg = compose_with_hydra(["hardware=local_gpus", "hydra.launcher.n_jobs=4"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 4
    assert cfg.hydra.callbacks.one_gpu_per_job._target_ == "kdlab.devices.OneGpuPerJob"
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("gpu", 1)
    check_launcher(cfg.hydra.launcher, ["0", "1", "2", "3"])
    with pytest.raises(ValueError, match="n_jobs=4 jobs at once, but 2 GPUs"):
        check_launcher(cfg.hydra.launcher, ["0", "1"])
    with pytest.raises(ValueError, match="process"):
        check_launcher(OmegaConf.create({"n_jobs": 2, "backend": "threading"}), ["0", "1"])


def _claim(lock_dir: str, gpus: list[str], claims: "multiprocessing.Queue", release: "multiprocessing.Event") -> None:
    try:
        first, again = claim_gpu(Path(lock_dir), gpus), claim_gpu(Path(lock_dir), gpus)
        claims.put((first, again))
    except RuntimeError as error:
        claims.put(("error", str(error)))
    release.wait(30)  # hold the GPU as a busy worker does


def test_worker_processes_get_distinct_gpus_and_keep_them(tmp_path: Path) -> None:
    context = multiprocessing.get_context("forkserver")  # fresh processes; torch and Lightning preloaded (cli_process)
    claims, release = context.Queue(), context.Event()
    gpus = ["3", "5", "6"]
    workers = [context.Process(target=_claim, args=(str(tmp_path), gpus, claims, release)) for _ in range(4)]
    for worker in workers:
        worker.start()
    answers = [claims.get(timeout=300) for _ in workers]  # each process imports kdlab: slow on a loaded machine
    release.set()
    for worker in workers:
        worker.join(30)
    held = sorted(first for first, again in answers if first != "error")
    assert held == gpus, "three workers hold the three GPUs, one each"
    assert all(first == again for first, again in answers if first != "error"), "a process keeps its GPU"
    (refused,) = [message for first, message in answers if first == "error"]
    assert "all 3 GPUs (3, 5, 6) are held" in refused

    # Once the workers have exited their GPUs are free again.
    worker = context.Process(target=_claim, args=(str(tmp_path), gpus, claims, release))
    worker.start()
    assert claims.get(timeout=300)[0] in gpus
    worker.join(30)


def test_callback_sets_the_visible_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kdlab.devices

    monkeypatch.setattr(kdlab.devices, "_claimed", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")
    callback = OneGpuPerJob()
    config = OmegaConf.create({"hydra": {"launcher": {"n_jobs": 2}, "sweep": {"dir": str(tmp_path)}, "job": {"num": 0}}})
    callback.on_multirun_start(config)
    assert callback.gpus == ["2", "7"]
    callback.on_job_start(config)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.setattr(kdlab.devices, "_claimed", None)
    assert OneGpuPerJob("4, 5").gpus == ["4", "5"] and OneGpuPerJob([0, 1]).gpus == ["0", "1"]


@pytest.mark.slow
def test_optuna_trials_run_at_once_each_on_its_own_gpu(outputs: Path) -> None:
    """hparams_search=kd_optuna on hardware=local_gpus, on CPU with two pretend GPU ids: two trials run at
    once in joblib worker processes, each told a different GPU, and Optuna gets both trials' val/acc."""
    kdlab("train", "hparams_search=kd_optuna", "hardware=local_gpus", "trainer.accelerator=cpu", "trainer.precision=32-true",
          "hydra.callbacks.one_gpu_per_job.gpus=[7,9]", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_trials=2",
          "hydra.sweeper.n_jobs=2", "trainer.max_epochs=1", "teacher.max_epochs=1", "logger=none", outputs=outputs)
    (sweep,) = (outputs / "multirun").iterdir()
    jobs = sorted(path.parent for path in sweep.glob("*/results.json"))
    results = [json.loads((job / "results.json").read_text()) for job in jobs]
    assert [(r["status"], r["method"]) for r in results] == [("completed", "kd")] * 2
    temperatures = [r["config"]["objective"]["temperature"] for r in results]
    assert len(set(temperatures)) == 2 and all(1.0 <= t <= 8.0 for t in temperatures)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(r["metrics"]["val/acc"] for r in results)
    gpus = sorted(re.search(r"runs on GPU (\d+)", (job / "train.log").read_text()).group(1) for job in jobs)
    assert gpus == ["7", "9"]
