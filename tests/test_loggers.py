"""logger=tensorboard writes the run's epoch metrics as TensorBoard events, and loggers combine as a list."""

import csv
import importlib.util
from pathlib import Path

import pytest
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_configs import compose_train

from kdlab.errors import ConfigError
from kdlab.loggers import check_tensorboard
from kdlab.run import run

TINY = ["trainer.max_epochs=2", "teacher.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.log_every_n_steps=1"]


def test_loggers_combine_as_a_list_of_the_group(tmp_path: Path) -> None:
    assert set(compose_train(["logger=[wandb,tensorboard]"], tmp_path).logger) == {"csv", "wandb", "tensorboard"}
    assert set(compose_train(["logger=tensorboard"], tmp_path).logger) == {"csv", "tensorboard"}  # CSV is always on


def test_a_tensorboard_run_writes_the_epoch_metrics_the_csv_log_has(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    cfg = compose_train(["+method=scratch", "logger=tensorboard", *TINY, f"paths.output_dir={directory}", f"paths.log_dir={tmp_path}"],
                        directory)
    with open_dict(cfg):
        cfg.callbacks = {}
    run(cfg)
    assert list((directory / "tensorboard").glob("events.out.tfevents.*"))
    board = EventAccumulator(str(directory / "tensorboard"))  # every event file of the run's directory
    board.Reload()
    assert {"val/acc", "val/ece", "train/loss", "test/acc"} <= set(board.Tags()["scalars"])
    with open(directory / "csv" / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/acc")]
    assert len(rows) == 2  # one validation per epoch
    logged = [(event.step, event.value) for event in board.Scalars("val/acc")]
    assert logged == [(int(row["step"]), pytest.approx(float(row["val/acc"]), abs=1e-6)) for row in rows]


def test_a_missing_tensorboard_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ConfigError, match=r"^logger=tensorboard needs tensorboard, which is not installed here: pip install tensorboard"):
        check_tensorboard()
