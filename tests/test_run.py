"""`kdlab train` end to end, in fresh processes, as a user runs it (small epochs)."""

import json
from pathlib import Path

import pytest
from conftest import FAST, kdlab

pytestmark = pytest.mark.slow


def results_of(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))]


def test_default_run_trains_teacher_once_and_repeats_exactly(outputs: Path) -> None:
    """The default job (W&B offline + CSV) ends with its summary; a second identical run
    takes the teacher from the cache and reproduces every metric exactly."""
    first = kdlab("train", "trainer.max_epochs=2", "teacher.max_epochs=3", outputs=outputs)
    second = kdlab("train", "trainer.max_epochs=2", "teacher.max_epochs=3", outputs=outputs)
    for result in (first, second):
        assert "student accuracy (test)" in result.stdout and "run directory:" in result.stdout

    a, b = results_of(outputs / "runs")
    assert (a["teacher"]["source"], b["teacher"]["source"]) == ("trained", "cache")
    assert a["metrics"] == b["metrics"]
    assert a["teacher"]["metrics"]["acc"] > 0.5
    for key in ("test/acc", "test/teacher_acc", "test/agreement", "test/kl", "val/acc", "train/loss"):
        assert key in a["metrics"], key
    assert (a["method"], a["divergence"], a["divergence_params"], a["seed"]) == ("kd", "fkl", {"drop_teacher_entropy": False}, 0)
    assert a["regime"] == "kdlab.modules.distill.DistillModule" and a["objective"]["class"] == "kdlab.objectives.hinton_kd.HintonKD"
    assert {"torch", "lightning", "hydra-core"} <= set(a["versions"])

    run_dir = next((outputs / "runs").glob("kd-fkl-digits_cnn-digits-s0/*"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B must log offline without an API key"
    assert len(list((outputs / "teachers").glob("*/teacher.safetensors"))) == 1


def test_multirun_runs_every_job(outputs: Path) -> None:
    kdlab("train", "-m", "+method=scratch", "seed=0,1", *FAST, outputs=outputs)
    runs = results_of(outputs / "multirun")
    assert sorted(r["seed"] for r in runs) == [0, 1]
    assert all(r["method"] == "scratch" and r["divergence"] is None and r["teacher"] is None for r in runs)
    assert runs[0]["metrics"]["train/loss"] != runs[1]["metrics"]["train/loss"]


def test_a_failed_run_says_why_in_one_line_and_is_recorded(outputs: Path) -> None:
    result = kdlab("train", "+method=scratch", "trainer.max_epochs=abc", "logger=none", outputs=outputs, check=False)
    assert result.returncode == 1
    message = "trainer.max_epochs='abc' must be an integer or null (the max_epochs argument of lightning.Trainer)"
    assert result.stderr.strip().splitlines() == [f"kdlab: {message}"]
    (record,) = results_of(outputs / "runs")
    assert record["status"] == "failed" and record["error"] == f"ConfigError: {message}"
    assert record["method"] == "scratch" and record["config"]["trainer"]["max_epochs"] == "abc"


def test_ddp_on_two_cpu_processes(outputs: Path) -> None:
    kdlab("train", "hardware=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *FAST, outputs=outputs)
    (result,) = results_of(outputs / "runs")
    assert result["config"]["trainer"]["strategy"] == "ddp"
    assert result["teacher"]["source"] == "trained"
    assert 0.0 < result["metrics"]["test/acc"] <= 1.0
