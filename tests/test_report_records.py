"""`kdlab report` on written records: damaged or foreign results.json files are listed and never stop
a report; the pooling rule (which config values split a cell, which are bookkeeping); published
numbers; the Pareto frontier. Real runs are in test_report.py."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from kdlab.cli import main as cli_main
from kdlab.errors import ConfigError
from kdlab.report import write_report
from kdlab.report.cells import matches, natural
from kdlab.report.plots import pareto_frontier
from kdlab.results import write_json_atomic


def kdlab_config(run_dir: Path, seed: int, temperature: float = 4.0, lr: float = 0.01, published: dict | None = None) -> dict:
    """The parts of a resolved kdlab config the report reads, with the bookkeeping a real run has."""
    return {
        "seed": seed, "method": "kd", "run_name": f"kd-fkl-m-d-s{seed}", "resume": False, "ckpt_path": None,
        "objective": {"temperature": temperature}, "optimizer": {"lr": lr}, "published": published,
        "trainer": {"max_epochs": 2, "default_root_dir": str(run_dir)},
        "paths": {"output_dir": str(run_dir), "log_dir": str(run_dir.parent), "teacher_dir": str(run_dir.parent / "teachers")},
        "logger": {"wandb": {"name": f"kd-fkl-m-d-s{seed}", "tags": ["kd", f"seed{seed}"], "save_dir": str(run_dir)}},
        "callbacks": {"checkpoint": {"dirpath": str(run_dir / "checkpoints"), "monitor": "val/acc"}},
        "dataset": {"datamodule": {"cache_dir": str(run_dir.parent / "teachers")}},
    }


def fake_run(root: Path, name: str, metrics: dict, seed: int = 0, config: dict | None = None, **fields: object) -> Path:
    """A completed run directory with the results.json kdlab.run writes."""
    run_dir = root / name
    record = {"run_name": name, "method": "kd", "divergence": "fkl", "model": "m", "dataset": "d", "seed": seed,
              "status": "completed", "metrics": metrics, "config": config or kdlab_config(run_dir, seed), **fields}
    write_json_atomic(run_dir / "results.json", record)
    return run_dir


DAMAGED = {
    "empty": ("", "empty results.json"),
    "truncated": ('{"status": "compl', "unreadable results.json: Unterminated string"),
    "null": ("null", "results.json holds null, not a kdlab record"),
    "list": ("[1, 2]", "results.json holds list, not a kdlab record"),
    "foreign": ('{"accuracy": 0.9, "model": "resnet"}', "results.json is not a kdlab record: status null"),
    "null_metrics": (json.dumps({"status": "completed", "run_name": "r", "method": "kd", "seed": 0, "metrics": None, "config": {}}),
                     "results.json is a completed record without metrics"),
}


def test_damaged_and_foreign_records_are_listed_and_the_report_goes_on(tmp_path: Path) -> None:
    fake_run(tmp_path, "good", {"test/acc": 0.9})
    fake_run(tmp_path, "acc_null", {"test/acc": None}, seed=1)
    fake_run(tmp_path, "acc_nan", {"test/acc": float("nan")}, seed=2)
    fake_run(tmp_path, "acc_text", {"test/acc": "0.9"}, seed=3)
    for name, (text, _) in DAMAGED.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    cli_main(["report", str(tmp_path), "--out", str(tmp_path / "out")])
    report = write_report([tmp_path], tmp_path / "out")
    assert report.summary[["method", "n", "mean"]].values.tolist() == [["kd", 1, 0.9]]
    reasons = {run.run_dir.name: reason for run, reason in report.left_out}
    assert sorted(reasons) == sorted([*DAMAGED, "acc_null", "acc_nan", "acc_text"])
    for name, (_, reason) in DAMAGED.items():
        assert reasons[name].startswith(f"invalid: {reason}"), (name, reasons[name])
    assert reasons["acc_null"] == "completed with test/acc = null"
    assert reasons["acc_nan"] == "completed with test/acc = NaN"
    assert reasons["acc_text"] == 'completed with test/acc = "0.9" (not a number)'
    text = (tmp_path / "out" / "report.md").read_text()
    assert all(name in text for name in DAMAGED)


def test_a_damaged_hydra_config_of_a_killed_run_is_listed(tmp_path: Path) -> None:
    fake_run(tmp_path, "good", {"test/acc": 0.9})
    for name, text in (("list", "- a\n- b\n"), ("broken", "a: [\n")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(text)
    reasons = {run.run_dir.name: reason for run, reason in write_report([tmp_path], tmp_path / "out").left_out}
    assert reasons["list"] == "incomplete: no results.json; .hydra/config.yaml is not a mapping"
    assert reasons["broken"].startswith("incomplete: no results.json; unreadable .hydra/config.yaml")


def test_only_a_directory_without_runs_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runs found under"):
        write_report([tmp_path / "empty"])
    with pytest.raises(ValueError, match="is not a directory"):
        write_report([tmp_path / "nope"])
    with pytest.raises(SystemExit):  # the command prints the error and exits with status 2
        cli_main(["report", str(tmp_path / "nope")])


def test_bookkeeping_differences_pool_and_config_differences_split(tmp_path: Path) -> None:
    """Seeds 0 and 1 differ in every path, name, tag and directory (as two real runs do): one cell.
    A run with another learning rate is a cell of its own, and the report names optimizer.lr."""
    for seed, acc in ((0, 0.6), (1, 0.8)):
        fake_run(tmp_path / "a", f"s{seed}", {"test/acc": acc}, seed=seed)
    other = tmp_path / "b" / "s0"
    fake_run(tmp_path / "b", "s0", {"test/acc": 0.1}, config=kdlab_config(other, 0, lr=0.1))
    report = write_report([tmp_path], tmp_path / "out")
    assert report.cells.variant_keys == ["optimizer.lr"]
    lines = report.summary[["variant", "n", "seeds", "mean"]].values.tolist()
    assert lines == [["optimizer.lr=0.01", 2, "0 1", pytest.approx(0.7)], ["optimizer.lr=0.1", 1, "0", 0.1]]
    assert list(report.table.columns) == ["fkl [optimizer.lr=0.01]", "fkl [optimizer.lr=0.1]"]
    assert any("differ in optimizer.lr" in note and "--where optimizer.lr=VALUE" in note for note in report.notes)

    only = write_report([tmp_path], tmp_path / "out", where=["optimizer.lr=1e-2"])
    assert only.summary[["variant", "n"]].values.tolist() == [["", 2]], "--where compares numbers as numbers"


def test_repeats_of_a_seed_keep_the_newest_run(tmp_path: Path) -> None:
    old = fake_run(tmp_path, "old", {"test/acc": 0.5})
    new = fake_run(tmp_path, "new", {"test/acc": 0.7})
    os.utime(old / "results.json", (1_000_000, 1_000_000))  # written long before: "new" sorts first by name, not by time
    report = write_report([tmp_path], tmp_path / "out")
    assert report.summary[["n", "mean", "seeds"]].values.tolist() == [[1, 0.7, "0"]]
    ((run, reason),) = report.left_out
    assert run.run_dir == old and reason == "repeat of seed 0 in kd · fkl: the newer new is counted"
    assert report.cells.cells[0].runs[0].run_dir == new


def test_published_number_sits_next_to_the_achieved_one(tmp_path: Path) -> None:
    published = {"metric": "test/acc", "value": 0.7333, "source": "Hinton et al. 2015"}
    for seed, acc in enumerate((0.70, 0.72)):
        fake_run(tmp_path, f"r{seed}", {"test/acc": acc}, seed, kdlab_config(tmp_path / f"r{seed}", seed, published=published))
    report = write_report([tmp_path], tmp_path / "out")
    (line,) = report.summary.to_dict("records")
    assert line["published"] == 0.7333 and line["published_source"] == "Hinton et al. 2015"
    assert line["delta"] == pytest.approx(0.71 - 0.7333)
    assert report.table.loc["kd", "fkl"] == "0.7100 ± 0.0141 [paper 0.7333]"

    fake_run(tmp_path, "rkl", {"test/acc": 0.69}, 0, kdlab_config(tmp_path / "rkl", 0, published={**published, "divergence": "fkl"}),
             divergence="rkl")
    report = write_report([tmp_path], tmp_path / "out")
    assert report.table.loc["kd", "rkl"] == "0.6900 (n=1)", "a number published for KL is not shown for another divergence"


def test_rows_and_columns_can_be_config_paths_in_numeric_order(tmp_path: Path) -> None:
    for seed, (temperature, acc) in enumerate(((10.0, 0.4), (2.0, 0.5), (4.0, 0.6), (4.0, 0.8))):
        fake_run(tmp_path, f"t{seed}", {"val/acc": acc}, seed, kdlab_config(tmp_path / f"t{seed}", seed, temperature))
    report = write_report([tmp_path], tmp_path / "out", metric="val/acc", rows="objective.temperature", cols="method")
    assert list(report.table.index) == ["2.0", "4.0", "10.0"], "numbers in numeric order"
    assert report.table.loc["2.0", "kd"] == "0.5000 (n=1)"
    assert report.table.loc["4.0", "kd"] == f"0.7000 ± {np.std([0.6, 0.8], ddof=1):.4f} (n=2)"
    assert report.title == "val/acc: mean ± std over distinct seeds (n per cell shown; no std where n=1)"


def test_a_method_without_a_divergence_shows_none(tmp_path: Path) -> None:
    fake_run(tmp_path, "nkd", {"test/acc": 0.5}, method="nkd", divergence=None)
    report = write_report([tmp_path], tmp_path / "out")
    assert list(report.table.columns) == ["none"]
    assert write_report([tmp_path], tmp_path / "out", where=["divergence=none"]).summary["n"].tolist() == [1]


def test_no_alignment_figures_without_their_metrics(tmp_path: Path) -> None:
    fake_run(tmp_path, "plain", {"test/acc": 0.9})
    names = {path.name for path in write_report([tmp_path], tmp_path / "out").files}
    assert names == {"table.csv", "runs.csv", "report.md", "heatmap.png"}


def test_an_empty_table_says_what_the_runs_logged(tmp_path: Path) -> None:
    fake_run(tmp_path, "lm", {"test/golden_fkl": 0.3, "val/nll": 1.0})
    report = write_report([tmp_path], tmp_path / "out")
    assert report.table.empty
    assert "No completed run logged test/acc; they logged: test/golden_fkl, val/nll (choose one with --metric)." in report.notes


def test_bad_options_get_one_clear_line(tmp_path: Path) -> None:
    fake_run(tmp_path, "r", {"test/acc": 0.9})
    with pytest.raises(ConfigError, match="--where 'trainer': write KEY=VALUE"):
        write_report([tmp_path], where=["trainer"])
    with pytest.raises(ConfigError, match="--rows and --cols are both 'method'"):
        write_report([tmp_path], rows="method", cols="method")


def test_where_matches_text_numbers_and_booleans() -> None:
    assert matches(5, "5") and matches(5, "5.0") and matches(0.01, "1e-2") and matches("fkl", "fkl")
    assert matches(True, "true") and matches(None, "none") and not matches(5, "abc") and not matches(1, "true")


def test_natural_order_reads_numbers_inside_labels() -> None:
    labels = ["kd [max_epochs=30]", "10.0", "kd [max_epochs=5]", "2.0", "—"]
    assert sorted(labels, key=natural) == ["2.0", "10.0", "kd [max_epochs=5]", "kd [max_epochs=30]", "—"]


def test_pareto_frontier_keeps_only_undominated_points() -> None:
    points = np.array([[1.0, 0.5], [2.0, 0.4], [2.0, 0.9], [3.0, 0.7], [0.5, 0.1], [4.0, 1.2]])
    assert pareto_frontier(points).tolist() == [[0.5, 0.1], [1.0, 0.5], [2.0, 0.9], [4.0, 1.2]]
