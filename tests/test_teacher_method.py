"""`+method=teacher` trains the teacher alone into the cache entry a distillation run uses, and every
method accepts the teacher options, ignoring (with one note, recorded) those it does not use."""

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import kdlab
from omegaconf import open_dict
from test_configs import compose_train

from kdlab.fingerprint import fingerprint
from kdlab.models import SmallCNN
from kdlab.run import run
from kdlab.teachers import ZooTeacherModule, ignored_options, teacher_config

TINY = ["trainer.max_epochs=1", "teacher.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1", "logger=none"]


def run_job(overrides: list[str], tmp_path: Path, name: str) -> tuple[dict, dict]:
    """The job's results.json and its composed config (resolved)."""
    directory = tmp_path / name
    cfg = compose_train([*overrides, *TINY, f"paths.output_dir={directory}", f"paths.log_dir={tmp_path}"], directory)
    with open_dict(cfg):
        cfg.callbacks = {}
    run(cfg)
    return json.loads((directory / "results.json").read_text()), cfg


def test_the_teacher_method_builds_the_cache_entry_a_distillation_run_uses(tmp_path: Path) -> None:
    teacher, _ = run_job(["+method=teacher"], tmp_path, "teacher")
    student, kd_cfg = run_job(["+method=kd"], tmp_path, "kd")
    assert (teacher["method"], teacher["divergence"], teacher["divergence_params"]) == ("teacher", None, None)
    assert teacher["regime"] == f"{ZooTeacherModule.__module__}.{ZooTeacherModule.__qualname__}"
    assert (teacher["teacher"]["source"], student["teacher"]["source"]) == ("trained", "cache")
    assert teacher["teacher"]["fingerprint"] == student["teacher"]["fingerprint"] == fingerprint(teacher_config(kd_cfg))
    assert teacher["objective"]["class"] == "kdlab.objectives.cross_entropy.CrossEntropy"
    # The run evaluates the cached teacher with the usual panel: the distillation run measures the same teacher.
    assert teacher["metrics"]["test/acc"] == pytest.approx(student["metrics"]["test/teacher_acc"])
    assert teacher["metrics"]["test/acc"] == pytest.approx(teacher["teacher"]["metrics"]["acc"], abs=0.1)  # cache: all test batches
    assert {"val/acc", "val/ece", "test/top5"} <= set(teacher["metrics"]) and teacher["ignored"] == []
    assert not (tmp_path / "teacher" / "checkpoints").exists()  # nothing was fitted in the run


def test_scratch_ignores_the_teacher_options_with_one_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kdlab.run")
    result, _ = run_job(["+method=scratch", f"teacher.ckpt_path={tmp_path / 'absent.pt'}", "teacher.recipe=mcmi"], tmp_path, "scratch")
    assert result["status"] == "completed" and result["teacher"] is None
    assert result["ignored"] == ["teacher.ckpt_path", "teacher.max_epochs", "teacher.recipe"]
    notes = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert notes == ["+method=scratch does not use teacher.ckpt_path, teacher.max_epochs, teacher.recipe: ignored"]


def test_each_regime_ignores_what_it_does_not_use() -> None:
    overrides = ["teacher.max_epochs=3", "model.teacher.width=8", "seed=1"]
    assert ignored_options("frozen", "t.pt", overrides) == ignored_options("evaluated", "t.pt", overrides) == []
    assert ignored_options("online", "t.pt", overrides) == ["teacher.ckpt_path", "teacher.max_epochs"]
    assert ignored_options("pretrained", None, overrides) == ["teacher.max_epochs"]
    assert ignored_options(None, None, overrides) == ["model.teacher.width", "teacher.max_epochs"]
    assert ignored_options(None, None, ["model=digits_cnn", "+teacher.extra=1"]) == ["teacher.extra"]


@pytest.mark.slow
def test_a_baseline_shares_the_sweep_command(outputs: Path, tmp_path: Path) -> None:
    """`kdlab train -m +method=scratch,kd,teacher teacher.ckpt_path=X`: every job runs; kd and teacher use X."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "teacher.pt"
    torch.save(SmallCNN(in_channels=1, num_classes=10, width=32).state_dict(), checkpoint)
    result = kdlab("train", "-m", "+method=scratch,kd,teacher", f"teacher.ckpt_path={checkpoint}", *TINY, outputs=outputs)
    assert "teacher accuracy (val, last epoch)" in result.stdout  # the teacher run's summary names what it measured
    results = {r["method"]: r for r in (json.loads(p.read_text()) for p in (outputs / "multirun").rglob("results.json"))}
    assert {m: r["status"] for m, r in results.items()} == dict.fromkeys(("scratch", "kd", "teacher"), "completed")
    assert [results[m]["ignored"] for m in ("scratch", "kd", "teacher")] == [["teacher.ckpt_path", "teacher.max_epochs"], [], []]
    assert results["kd"]["teacher"]["source"] == results["teacher"]["teacher"]["source"] == "checkpoint"
    assert results["teacher"]["metrics"]["test/acc"] == pytest.approx(results["kd"]["metrics"]["test/teacher_acc"])
