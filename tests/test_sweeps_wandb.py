"""W&B runs of a grid: grouped by multirun or sweep, tagged, config flattened, teacher linked — offline."""

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from kdlab.loggers import dir_run_id, flatten_config, run_group, wandb_logger


@pytest.fixture
def multirun(tmp_path: Path):
    """Hydra's runtime config as a job of a multirun in `<tmp>/multirun/2026-01-01_00-00-00` sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_module("kdlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}/multirun/2026-01-01_00-00-00"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    yield
    HydraConfig.instance().cfg = None


def test_group_is_the_sweep_or_the_multirun(multirun: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert run_group() == "multirun-2026-01-01_00-00-00"
    assert run_group("my-group") == "my-group"
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    assert run_group() == "sweep-abc123"


def test_a_single_run_has_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    HydraConfig.instance().cfg = None
    assert run_group() is None


def test_flatten_config() -> None:
    nested = {"objective": {"temperature": 4.0, "divergence": {"name": "fkl"}}, "seed": 0, "tags": [1], "empty": {}}
    assert flatten_config(nested) == {"objective.temperature": 4.0, "objective.divergence.name": "fkl", "seed": 0,
                                      "tags": [1], "empty": {}}


def test_offline_run_has_group_tags_flat_config_and_teacher_link(multirun: None, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    logger = wandb_logger(project="kdlab", name="kd-fkl-s0", save_dir=str(tmp_path), tags=["kd", "fkl", "digits_cnn", "digits"])
    try:
        logger.log_hyperparams({"method": "kd", "objective": {"temperature": 4.0},
                                "teacher_record": {"fingerprint": "0123abcd", "path": "/t/teacher.pt"}})
        run = logger.experiment
        assert run.id == dir_run_id(tmp_path) and run.group == "multirun-2026-01-01_00-00-00"
        assert set(run.tags) == {"kd", "fkl", "digits_cnn", "digits", "teacher:0123abcd"}
        assert run.config["objective.temperature"] == 4.0 and run.config["teacher_record.path"] == "/t/teacher.pt"
    finally:
        logger.experiment.finish()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{dir_run_id(tmp_path)}")), "saved for `wandb sync`"


def test_wandb_agent_run_id_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
    assert wandb_logger(mode="disabled", save_dir=str(tmp_path))._wandb_init["id"] == "agentrun"
    assert wandb_logger(mode="disabled", save_dir=str(tmp_path), run_id="mine")._wandb_init["id"] == "mine"
    monkeypatch.delenv("WANDB_RUN_ID")
    assert wandb_logger(mode="disabled", save_dir=str(tmp_path))._wandb_init["id"] == dir_run_id(tmp_path)
