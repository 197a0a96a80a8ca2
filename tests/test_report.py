"""`kdlab report` on what kdlab really writes: real runs of the CLI (digits grids, a teacher-hacking
experiment, a known-reward preference experiment), reported on their own results.json and CSV logs.
Each figure appears exactly when its metrics exist; repeats of a seed count once; runs that differ
in a config value are never pooled."""

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import kdlab

from kdlab.cli import main as cli_main
from kdlab.errors import ConfigError
from kdlab.report import write_report
from kdlab.report.plots import epoch_curves, heatmap, proxy_golden, reward_kl
from kdlab.results import write_json_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST_DIGITS = ["teacher.max_epochs=1", "logger=none"]
# The teacher-hacking experiment shrunk to seconds: a tiny oracle, a 1-epoch teacher, 16 training prompts.
TINY_HACKING = [
    "experiment=teacher_hacking",
    "dataset.datamodule.oracle={vocab_size:8,prompt_length:2,response_length:3,n_layer:1,n_embd:8,n_head:2,init_std:0.1,temperature:0.5,seed:0}",
    "dataset.datamodule.teacher={n_layer:1,n_embd:8,n_head:2,sequences:32,epochs:1,batch_size:16,lr:1e-2}",
    "dataset.datamodule.prompts={train:16,val:8,test:8}", "dataset.batch_size=8", "module.sequence_samples=8",
    "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1", "logger=none",
]
# The known-reward preference experiment shrunk to seconds (as in test_policy_module.py).
TINY_PREFERENCE = [
    "experiment=pref_synthetic",
    "dataset.datamodule.sft.recipe.sequences=128", "dataset.datamodule.sft.recipe.epochs=1",
    "dataset.datamodule.sft.model.n_layer=1", "dataset.datamodule.sft.model.n_embd=16", "dataset.datamodule.sft.model.n_head=2",
    "dataset.datamodule.pairs.train=16", "dataset.datamodule.pairs.val=8", "dataset.datamodule.pairs.test=8",
    "dataset.batch_size=4", "module.samples=16", "trainer.max_epochs=1", "logger=none",
]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def records(root: Path) -> list[tuple[Path, dict]]:
    """(run directory, results.json) of every completed run under `root`, read independently of kdlab.report."""
    found = [(path.parent, json.loads(path.read_text())) for path in sorted(root.rglob("results.json"))]
    return [(run_dir, record) for run_dir, record in found if record.get("status") == "completed"]


def multirun_dirs(outputs: Path) -> list[Path]:
    return sorted((outputs / "multirun").iterdir())


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real digits runs under one outputs directory, two multiruns, in this order:
    1. +method=scratch,kd x seed=0,1, 1 epoch (the 2x2 grid), plus one failed run (results.json with
       status failed) and one killed run (a run directory without results.json) written into it;
    2. +method=kd seed 0 with trainer.max_epochs=2, then again with 1 epoch: a 2-epoch run, and a
       newer repeat of the grid's kd seed-0 run."""
    outputs = tmp_path_factory.mktemp("report") / "outputs"
    kdlab("train", "-m", "+method=scratch,kd", "seed=0,1", "trainer.max_epochs=1", *FAST_DIGITS, outputs=outputs)
    (grid,) = multirun_dirs(outputs)
    failed = grid / "4-kd-rkl-digits_cnn-digits-s0"
    write_json_atomic(failed / "results.json", {"status": "failed", "error": "ValueError: loss is NaN at step 3",
                                                "run_name": failed.name, "method": "kd", "divergence": "rkl",
                                                "model": "digits_cnn", "dataset": "digits", "seed": 0, "config": {}})
    killed = grid / "5-kd-fkl-digits_cnn-digits-s2"
    (killed / ".hydra").mkdir(parents=True)
    sibling = next(grid.glob("*-kd-fkl-*-s1*/.hydra"))  # the name, then the overrides beyond it
    (killed / ".hydra" / "config.yaml").write_text((sibling / "config.yaml").read_text().replace("seed: 1", "seed: 2"))
    (killed / ".hydra" / "hydra.yaml").write_text((sibling / "hydra.yaml").read_text())  # Hydra writes both when a job starts
    kdlab("train", "-m", "+method=kd", "trainer.max_epochs=2,1", *FAST_DIGITS, outputs=outputs)
    return outputs


def the_grid(outputs: Path) -> Path:
    return multirun_dirs(outputs)[0]


@pytest.mark.slow
def test_table_has_the_four_runs_as_cells_with_their_values(digits: Path, tmp_path: Path) -> None:
    grid = the_grid(digits)
    cli_main(["report", str(grid), "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "table.csv")
    expected: dict[tuple[str, str], list[float]] = {}
    for _, record in records(grid):
        expected.setdefault((record["method"], record["divergence"] or "none"), []).append(record["metrics"]["test/acc"])
    assert sorted(expected) == [("kd", "fkl"), ("scratch", "none")] and all(len(v) == 2 for v in expected.values())
    assert len(table) == 2 and table["n"].tolist() == [2, 2] and table["variant"].isna().all()
    for _, line in table.iterrows():
        values = expected[(line["method"], line["divergence"])]
        assert line["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert line["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert line["seeds"] == "0 1"
    text = (tmp_path / "report.md").read_text()
    kd = expected[("kd", "fkl")]
    assert f"| kd | {np.mean(kd):.4f} ± {np.std(kd, ddof=1):.4f} |" in text
    assert "test/acc: mean ± std over distinct seeds (n=2 seeds per cell" in text


@pytest.mark.slow
def test_failed_and_killed_runs_are_listed_not_counted(digits: Path, tmp_path: Path) -> None:
    report = write_report([the_grid(digits)], tmp_path)
    statuses = {run.run_dir.name: run.status for run in report.runs}
    assert statuses["4-kd-rkl-digits_cnn-digits-s0"] == "failed"
    assert statuses["5-kd-fkl-digits_cnn-digits-s2"] == "incomplete"
    killed = next(run for run in report.runs if run.status == "incomplete")
    assert (killed.get("method"), killed.get("divergence"), killed.get("seed")) == ("kd", "fkl", 2)
    assert sorted(run.run_dir.name for run, _ in report.left_out) == ["4-kd-rkl-digits_cnn-digits-s0", "5-kd-fkl-digits_cnn-digits-s2"]
    assert "rkl" not in report.table.columns and int(report.summary["n"].sum()) == 4
    text = (tmp_path / "report.md").read_text()
    assert "ValueError: loss is NaN at step 3" in text and "no results.json" in text
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["status"]) == ["completed"] * 4 + ["failed", "incomplete"]
    assert sorted(runs["cell"].dropna()) == ["kd · fkl"] * 2 + ["scratch · none"] * 2


@pytest.mark.slow
def test_heatmap_shows_mean_std_and_n_as_its_title_says(digits: Path, tmp_path: Path) -> None:
    report = write_report([the_grid(digits)], tmp_path)
    assert {path.name for path in report.files} == {"table.csv", "runs.csv", "report.md", "heatmap.png", "curves.png"}
    for name in ("heatmap.png", "curves.png"):
        width, height = png_size(tmp_path / name)
        assert width > 300 and height > 200
    assert "![heatmap](heatmap.png)" in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes leave no temporary files"

    axes = heatmap(report.summary, "method", "divergence", "test/acc").axes[0]
    assert "mean ± std" in axes.get_title() and "n distinct seeds" in axes.get_title()
    texts = sorted(text.get_text() for text in axes.texts)
    expected = sorted(f"{line['mean']:.4f}\n± {line['std']:.4f}\nn=2" for _, line in report.summary.iterrows())
    assert texts == expected


@pytest.mark.slow
def test_curves_are_the_mean_over_seeds_of_the_logged_epochs(digits: Path, tmp_path: Path) -> None:
    report = write_report([the_grid(digits)], tmp_path)
    figure = epoch_curves(report.cells.cells, ["val/acc", "train/loss"])
    val_axes = figure.axes[0]
    assert val_axes.get_ylabel() == "val/acc" and "mean ± std over n seeds" in val_axes.get_title()
    kd = [record for _, record in records(the_grid(digits)) if record["method"] == "kd"]
    (line,) = [line for line in val_axes.lines if line.get_label() == "kd · fkl (n=2)"]
    assert line.get_ydata()[-1] == pytest.approx(np.mean([record["metrics"]["val/acc"] for record in kd]), abs=1e-6)


@pytest.mark.slow
def test_the_same_seed_run_twice_counts_once_and_the_report_says_so(digits: Path, tmp_path: Path) -> None:
    report = write_report([digits], tmp_path, where=["trainer.max_epochs=1", "seed=0"])
    kd = report.summary[report.summary["method"] == "kd"]
    assert kd["n"].tolist() == [1] and kd["seeds"].tolist() == ["0"]
    (cell,) = [cell for cell in report.cells.cells if cell.row == "kd"]
    newer = multirun_dirs(digits)[1]
    assert cell.runs[0].run_dir.parent == newer, "the newest completed run of the seed is the one counted"
    ((older, reason),) = [(run, reason) for run, reason in report.left_out if "repeat" in reason]
    assert older.run_dir.parent == the_grid(digits) and "repeat of seed 0 in kd · fkl" in reason
    (note,) = [note for note in report.notes if "ran 2 times" in note]
    assert note.startswith("Seed 0 of kd · fkl ran 2 times: only the newest completed run")


@pytest.mark.slow
def test_runs_that_differ_in_max_epochs_are_not_pooled(digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli_main(["report", str(digits), "--rows", "objective.temperature", "--cols", "method", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "table.csv").fillna("")
    kd = table[table["method"] == "kd"].sort_values("variant")
    assert kd["variant"].tolist() == ["scheduler.T_max=1, trainer.max_epochs=1", "scheduler.T_max=2, trainer.max_epochs=2"]
    assert kd["n"].tolist() == [2, 1] and kd["seeds"].tolist() == ["0 1", "0"]
    two_epochs = [record["metrics"]["test/acc"] for _, record in records(digits) if record["config"]["trainer"]["max_epochs"] == 2]
    assert kd["mean"].tolist()[1] == pytest.approx(two_epochs[0], abs=1e-12)
    assert "differ in scheduler.T_max, trainer.max_epochs" in " ".join(printed.split())
    assert "--where trainer.max_epochs=VALUE" in " ".join(printed.split()), "the key the user set, not the one that follows from it"
    assert "kd [scheduler.T_max=2, trainer.max_epochs=2]" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_where_keeps_one_setting_and_names_what_exists(digits: Path, tmp_path: Path) -> None:
    report = write_report([digits], tmp_path, where=["trainer.max_epochs=2"])
    assert report.summary[["method", "variant", "n", "seeds"]].values.tolist() == [["kd", "", 1, "0"]]
    assert not report.cells.variant_keys
    assert report.notes[0] == f"1 of {len(report.runs)} runs match --where trainer.max_epochs=2."
    with pytest.raises(ConfigError, match="no run has trainer.max_epoch "):
        write_report([digits], tmp_path, where=["trainer.max_epoch=2"])
    with pytest.raises(ConfigError, match="its values are 1, 2"):
        write_report([digits], tmp_path, where=["trainer.max_epochs=7"])
    with pytest.raises(ConfigError, match="--rows objective.temprature: no completed run has"):
        write_report([digits], tmp_path, rows="objective.temprature")


def real_multirun(tmp_path_factory: pytest.TempPathFactory, *overrides: str) -> Path:
    """The outputs directory of `kdlab train -m OVERRIDES`, run in a fresh process."""
    outputs = tmp_path_factory.mktemp("outputs") / "outputs"
    kdlab("train", "-m", *overrides, outputs=outputs)
    return outputs


@pytest.fixture(scope="module")
def hacking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real teacher-hacking multirun (oracle -> teacher -> student), seeds 0 and 1, 3 epochs."""
    return real_multirun(tmp_path_factory, *TINY_HACKING, "seed=0,1")


@pytest.mark.slow
def test_proxy_golden_fires_on_a_real_teacher_hacking_run(hacking: Path, tmp_path: Path) -> None:
    report = write_report([hacking], tmp_path, metric="test/golden_fkl")
    assert "proxy_golden.png" in {path.name for path in report.files} and min(png_size(tmp_path / "proxy_golden.png")) > 200
    assert report.summary[["method", "divergence", "n"]].values.tolist() == [["lmkd", "fkl", 2]]
    figure = proxy_golden(report.cells.cells)
    assert "val/proxy_*" in figure.get_suptitle() and "mean over n seeds per cell" in figure.get_suptitle()
    forward = figure.axes[0]
    assert forward.get_title() == "lmkd · fkl (n=2)"
    golden, proxy = forward.lines[0], forward.lines[1]
    logs = [pd.read_csv(run_dir / "csv" / "metrics.csv") for run_dir, _ in records(hacking)]
    for line, column in ((golden, "val/golden_fkl"), (proxy, "val/proxy_fkl")):
        per_step = pd.concat([log.dropna(subset=[column]).set_index("step")[column] for log in logs], axis=1).mean(axis=1)
        assert list(line.get_xdata()) == list(per_step.index) and len(per_step) == 3
        np.testing.assert_allclose(line.get_ydata(), per_step.to_numpy(), rtol=1e-12)


@pytest.fixture(scope="module")
def preference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real known-reward f-DPO multirun: divergence rkl and js, 1 epoch each."""
    return real_multirun(tmp_path_factory, *TINY_PREFERENCE, "divergence=rkl,js")


@pytest.mark.slow
def test_reward_kl_fires_on_real_preference_runs(preference: Path, tmp_path: Path) -> None:
    report = write_report([preference], tmp_path, metric="test/reward")
    names = {path.name for path in report.files}
    assert {"reward_kl.png", "heatmap.png", "curves.png"} <= names and "proxy_golden.png" not in names
    assert sorted(report.summary["divergence"]) == ["js", "rkl"]
    axes = reward_kl(report.cells.cells).axes[0]
    assert axes.get_title() == "final test/reward vs test/kl_ref: one point per run (distinct seeds)"
    plotted = sorted(tuple(point) for collection in axes.collections for point in collection.get_offsets().tolist())
    expected = sorted((record["metrics"]["test/kl_ref"], record["metrics"]["test/reward"]) for _, record in records(preference))
    assert len(expected) == 2
    np.testing.assert_allclose(np.array(plotted), np.array(expected), rtol=1e-6)


def test_an_empty_directory_has_no_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["report", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"no runs found under {tmp_path}" in capsys.readouterr().err
