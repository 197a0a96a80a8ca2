"""`kdlab train` end to end, in fresh processes, as a user runs it (small epochs)."""

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import FAST, KDLAB, kdlab

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


def test_interrupted_run_resumes_from_its_last_checkpoint(outputs: Path) -> None:
    args = ["train", "+method=scratch", "trainer.max_epochs=30", "logger=none"]
    env = {**os.environ, "KDLAB_OUTPUTS": str(outputs)}
    job = subprocess.Popen([*KDLAB, *args], env=env, cwd=outputs.parent, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(outputs.glob("runs/*/*/checkpoints/last.ckpt")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # like a node lost to pre-emption
    job.wait()
    (interrupted,) = outputs.glob("runs/*/*")
    assert not (interrupted / "results.json").exists()

    kdlab(*args, "resume=true", outputs=outputs)
    (result,) = results_of(outputs / "runs")
    assert result["resumed_from"] == str(interrupted / "checkpoints" / "last.ckpt")
    assert result["epochs"] == 30
    resumed_dir = Path(result["config"]["paths"]["output_dir"])
    with open(resumed_dir / "csv" / "metrics.csv") as file:
        epochs = {int(row["epoch"]) for row in csv.DictReader(file) if row["val/acc"]}
    assert min(epochs) > 0 and max(epochs) == 29


def test_a_failed_run_says_why_and_is_recorded(outputs: Path) -> None:
    result = kdlab("train", "+method=scratch", "resume=true", "logger=none", outputs=outputs, check=False)
    assert result.returncode != 0
    assert "no unfinished run with this config" in result.stderr
    (record,) = results_of(outputs / "runs")
    assert record["status"] == "failed" and "no unfinished run" in record["error"]
    assert record["method"] == "scratch" and record["config"]["resume"] is True


def test_ddp_on_two_cpu_processes(outputs: Path) -> None:
    kdlab("train", "hardware=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *FAST, outputs=outputs)
    (result,) = results_of(outputs / "runs")
    assert result["config"]["trainer"]["strategy"] == "ddp"
    assert result["teacher"]["source"] == "trained"
    assert 0.0 < result["metrics"]["test/acc"] <= 1.0
