"""`kdlab report`: a real 2x2 multirun becomes the right table, failed and killed runs are listed,
the files are written, and each figure appears exactly when its metrics exist."""

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import kdlab

from kdlab.cli import main as cli_main
from kdlab.report import write_report
from kdlab.report.plots import pareto_frontier, proxy_golden_pairs
from kdlab.report.table import label
from kdlab.results import write_json_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real multirun: +method=scratch,kd x seed=0,1 on digits, 1 epoch, plus one failed run
    (results.json with status failed) and one killed run (a run directory without results.json)."""
    outputs = tmp_path_factory.mktemp("report") / "outputs"
    kdlab("train", "-m", "+method=scratch,kd", "seed=0,1", "trainer.max_epochs=1", "teacher.max_epochs=1", "logger=none",
          outputs=outputs)
    (multirun,) = (outputs / "multirun").iterdir()
    failed = multirun / "4-kd-rkl-digits_cnn-digits-s0"
    write_json_atomic(failed / "results.json", {"status": "failed", "error": "ValueError: loss is NaN at step 3",
                                                "run_name": failed.name, "method": "kd", "divergence": "rkl",
                                                "model": "digits_cnn", "dataset": "digits", "seed": 0, "config": {}})
    killed = multirun / "5-kd-fkl-digits_cnn-digits-s2"
    (killed / ".hydra").mkdir(parents=True)
    sibling = next(multirun.glob("*-kd-fkl-*-s1/.hydra"))
    (killed / ".hydra" / "config.yaml").write_text((sibling / "config.yaml").read_text().replace("seed: 1", "seed: 2"))
    (killed / ".hydra" / "hydra.yaml").write_text((sibling / "hydra.yaml").read_text())  # Hydra writes both when a job starts
    return multirun


def results_by_cell(multirun: Path, metric: str) -> dict[tuple[str, str], list[float]]:
    cells: dict[tuple[str, str], list[float]] = {}
    for path in multirun.rglob("results.json"):
        record = json.loads(path.read_text())
        if record["status"] == "completed":
            cells.setdefault((record["method"], label(record["divergence"])), []).append(record["metrics"][metric])
    return cells


@pytest.mark.slow
def test_table_has_the_four_runs_as_cells_with_their_values(grid: Path, tmp_path: Path) -> None:
    cli_main(["report", str(grid), "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "table.csv")
    expected = results_by_cell(grid, "test/acc")
    assert sorted(expected) == [("kd", "fkl"), ("scratch", label(None))] and all(len(v) == 2 for v in expected.values())
    assert len(table) == 2 and table["n"].tolist() == [2, 2]
    for _, line in table.iterrows():
        values = expected[(line["method"], line["divergence"])]
        assert line["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert line["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert line["seeds"] == "0 1"
    text = (tmp_path / "report.md").read_text()
    kd = expected[("kd", "fkl")]
    assert f"| kd | {np.mean(kd):.4f} ± {np.std(kd, ddof=1):.4f} |" in text


@pytest.mark.slow
def test_failed_and_killed_runs_are_listed_not_counted(grid: Path, tmp_path: Path) -> None:
    report = write_report([grid], tmp_path)
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


@pytest.mark.slow
def test_heatmap_and_curves_are_png_images(grid: Path, tmp_path: Path) -> None:
    report = write_report([grid], tmp_path)
    assert {path.name for path in report.files} == {"table.csv", "runs.csv", "report.md", "heatmap.png", "curves.png"}
    for name in ("heatmap.png", "curves.png"):
        width, height = png_size(tmp_path / name)
        assert width > 300 and height > 200
    assert "![heatmap](heatmap.png)" in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes leave no temporary files"


# ---- Synthetic runs: published numbers, config-path axes, alignment and oracle figures ----------------


def fake_run(root: Path, name: str, metrics: dict[str, float], history: pd.DataFrame | None = None,
             temperature: float = 4.0, published: dict | None = None, **identity: object) -> None:
    """A completed run directory as kdlab writes it: results.json, and csv/metrics.csv if `history`."""
    record = {"status": "completed", "run_name": name, "method": "kd", "divergence": "fkl", "model": "m", "dataset": "d",
              "seed": 0, "metrics": metrics, **identity,
              "config": {"objective": {"temperature": temperature}, "published": published}}
    write_json_atomic(root / name / "results.json", record)
    if history is not None:
        (root / name / "csv").mkdir()
        history.to_csv(root / name / "csv" / "metrics.csv", index=False)


def test_published_number_sits_next_to_the_achieved_one(tmp_path: Path) -> None:
    published = {"metric": "test/acc", "value": 0.7333, "source": "Hinton et al. 2015"}
    for seed, acc in enumerate((0.70, 0.72)):
        fake_run(tmp_path, f"r{seed}", {"test/acc": acc}, seed=seed, published=published)
    report = write_report([tmp_path], tmp_path / "out")
    (line,) = report.summary.to_dict("records")
    assert line["published"] == 0.7333 and line["published_source"] == "Hinton et al. 2015"
    assert line["delta"] == pytest.approx(0.71 - 0.7333)
    assert report.table.loc["kd", "fkl"] == "0.7100 ± 0.0141 [paper 0.7333]"

    fake_run(tmp_path, "rkl", {"test/acc": 0.69}, divergence="rkl", published={**published, "divergence": "fkl"})
    report = write_report([tmp_path], tmp_path / "out")
    assert report.table.loc["kd", "rkl"] == "0.6900 (n=1)", "a number published for KL is not shown for another divergence"


def test_rows_and_columns_can_be_config_paths(tmp_path: Path) -> None:
    for temperature, acc in ((10.0, 0.4), (2.0, 0.5), (4.0, 0.6), (4.0, 0.8)):
        fake_run(tmp_path, f"t{temperature}-{acc}", {"val/acc": acc}, temperature=temperature)
    report = write_report([tmp_path], tmp_path / "out", metric="val/acc", rows="objective.temperature", cols="method")
    assert list(report.table.index) == ["2.0", "4.0", "10.0"], "numbers in numeric order"
    assert report.table.loc["2.0", "kd"] == "0.5000 (n=1)"
    assert report.table.loc["4.0", "kd"] == f"0.7000 ± {np.std([0.6, 0.8], ddof=1):.4f} (n=2)"


def test_reward_kl_frontier_and_proxy_golden_figures_when_their_metrics_exist(tmp_path: Path) -> None:
    steps = pd.DataFrame({"epoch": 0, "step": [0, 10, 20, 30], "train/proxy/kl_seq": [2.0, 1.0, 0.5, 0.3],
                          "train/golden/kl_seq": [2.5, 1.6, 1.5, 1.9]})
    for name, kl, reward in (("dpo", 1.0, 0.5), ("fdpo", 2.0, 0.9), ("tdpo", 3.0, 0.7)):
        fake_run(tmp_path, name, {"test/reward": reward, "test/kl_ref": kl}, steps, method=name)
    report = write_report([tmp_path], tmp_path / "out", metric="test/reward")
    names = {path.name for path in report.files}
    assert {"reward_kl.png", "proxy_golden.png", "heatmap.png"} <= names and "curves.png" not in names
    for name in ("reward_kl.png", "proxy_golden.png"):
        assert min(png_size(tmp_path / "out" / name)) > 200


def test_no_alignment_figures_without_their_metrics(tmp_path: Path) -> None:
    fake_run(tmp_path, "plain", {"test/acc": 0.9})
    names = {path.name for path in write_report([tmp_path], tmp_path / "out").files}
    assert names == {"table.csv", "runs.csv", "report.md", "heatmap.png"}


def test_pareto_frontier_keeps_only_undominated_points() -> None:
    points = np.array([[1.0, 0.5], [2.0, 0.4], [2.0, 0.9], [3.0, 0.7], [0.5, 0.1], [4.0, 1.2]])
    assert pareto_frontier(points).tolist() == [[0.5, 0.1], [1.0, 0.5], [2.0, 0.9], [4.0, 1.2]]


def test_proxy_golden_pairs_match_by_path() -> None:
    columns = ["step", "val/proxy/kl", "val/golden/kl", "train/proxy/tvd", "proxy_note", "golden/x"]
    assert proxy_golden_pairs(columns) == [("val/proxy/kl", "val/golden/kl")]


def test_unreadable_results_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"status": "compl')
    report = write_report([tmp_path], tmp_path / "out")
    ((run, reason),) = report.left_out
    assert run.status == "failed" and "unreadable results.json" in reason
    with pytest.raises(ValueError, match="is not a directory"):
        write_report([tmp_path / "nope"])
    with pytest.raises(SystemExit):  # the command prints the error and exits with status 2
        cli_main(["report", str(tmp_path / "nope")])
