"""A run directory's name says what the run changes, and no run writes into an earlier run's directory."""

import json
from pathlib import Path

import pytest
from conftest import kdlab

from kdlab.resume import unused_directory
from kdlab.run_dirs import MAX_LABEL, differs

TINY = ["trainer.max_epochs=1", "teacher.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1", "logger=none"]


def test_the_label_is_the_overrides_beyond_the_run_name() -> None:
    assert differs(["method=kd", "divergence=rkl", "model=digits_cnn", "dataset=digits", "seed=3"]) == ""
    assert differs(["seed=1", "objective.temperature=4", "+trainer.limit_train_batches=2", "divergence.alpha=0.3"]) == (
        "-divergence.alpha=0.3,objective.temperature=4,trainer.limit_train_batches=2")
    # What does not change the computation is left out (resume=true must name the same directory); a path is one name.
    assert differs(["paths.log_dir=/x", "logger=none", "logger.wandb.mode=offline", "resume=true", "ckpt_path=last"]) == ""
    assert differs(["model.student.name_or_path=/models/mini"]) == "-model.student.name_or_path=%2Fmodels%2Fmini"


def test_a_long_label_keeps_the_values_then_a_hash() -> None:
    keys = [f"module.block_{i}.setting_number_{i}={i}" for i in range(6)]
    short = differs(keys)
    assert short.startswith("-" + ",".join(f"setting_number_{i}={i}" for i in range(6)) + "~")  # each key by its last part
    # Other keys with the same last part and value: the shortened labels read alike, the hash keeps them apart.
    teacher, student = (f"model.{role}.name_or_path=/models/{'m' * 150}" for role in ("teacher", "student"))
    assert differs([teacher]) != differs([student]) and differs([teacher])[:-9] == differs([student])[:-9]
    many = [f"module.block.setting_number_{i}={i}" for i in range(40)]
    label = differs(many)
    assert len(label) == MAX_LABEL + 1 and label[-9] == "~" and label != differs(many[:-1])


def test_a_named_directory_that_holds_a_run_is_not_reused(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    assert unused_directory([f"hydra.run.dir={fixed}"], multirun=False) == []  # free: used as named
    fixed.mkdir()
    (fixed / "config_fingerprint").write_text("abc\n")
    assert unused_directory([f"hydra.run.dir={fixed}"], multirun=False) == [f"hydra.run.dir='{tmp_path / 'fixed-run2'}'"]
    (tmp_path / "fixed-run2" / ".hydra").mkdir(parents=True)
    assert unused_directory([f"hydra.run.dir={fixed}"], multirun=False) == [f"hydra.run.dir='{tmp_path / 'fixed-run3'}'"]
    assert unused_directory([f"hydra.run.dir={fixed}"], multirun=True) == []  # a multirun's is hydra.sweep.dir
    assert unused_directory(["seed=1"], multirun=False) == []  # not named: Hydra's own, with a timestamp


@pytest.mark.slow
def test_runs_whose_names_agree_keep_their_own_directories(outputs: Path, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    kdlab("train", "-m", f"hydra.sweep.dir={fixed}", "objective.temperature=2,4", *TINY, outputs=outputs)
    first = {path: path.read_text() for path in fixed.glob("*/results.json")}
    assert sorted(json.loads(text)["config"]["objective"]["temperature"] for text in first.values()) == [2.0, 4.0]
    names = sorted(path.parent.name for path in first)
    assert [name.split("-", 1)[0] for name in names] == ["0", "1"]
    assert [f"temperature={t}" in name and name.startswith(f"{job}-kd-fkl-digits_cnn-digits-s0-") for job, t, name in
            zip((0, 1), (2, 4), names)] == [True, True], names

    # The same config again, without resume=true: a new directory beside it; the earlier runs' files are untouched.
    again = kdlab("train", "-m", f"hydra.sweep.dir={fixed}", "objective.temperature=2", *TINY, outputs=outputs)
    assert f"runs in {tmp_path / 'fixed-run2'}" in again.stdout + again.stderr
    assert {path: path.read_text() for path in fixed.glob("*/results.json")} == first
    (rerun,) = (tmp_path / "fixed-run2").glob("*/results.json")
    assert json.loads(rerun.read_text())["status"] == "completed"

    # resume=true with the directory named continues that directory: its completed job trains nothing.
    kdlab("train", "-m", f"hydra.sweep.dir={fixed}", "objective.temperature=2", *TINY, "resume=true", outputs=outputs)
    assert {path: path.read_text() for path in fixed.glob("*/results.json")} == first
    assert not (tmp_path / "fixed-run3").exists()
