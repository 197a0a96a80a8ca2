"""The grid presets (experiment=grid_*) and their sweeper (hydra/sweeper=kdlab_grid): every
classification method enters, once per divergence when it takes one and once otherwise; every job
composes and builds; the command line restricts a grid; the CIFAR-100 grid's published numbers reach
`kdlab report` beside their cells."""

import json
from pathlib import Path

import pytest
from conftest import kdlab
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra_plugins.kdlab_grid_sweeper.grid_sweeper import grid_jobs
from omegaconf import OmegaConf, open_dict
from test_sweeps import CONF, assert_job, compose_with_hydra

from kdlab.methods import catalogue
from kdlab.modules.classification import ClassifierModule
from kdlab.objectives.base import OpenSlot
from kdlab.report import write_report
from kdlab.results import write_json_atomic

GRIDS = sorted(p.stem for p in (CONF / "experiment").glob("grid_*.yaml"))
CLASSIFICATION = {m.name: m for m in catalogue() if issubclass(m.regime, ClassifierModule)}


def sweeper_of(grid: str, tmp_path: Path):
    sweeper = compose_with_hydra([f"experiment={grid}"], tmp_path).hydra.sweeper
    assert sweeper._target_.endswith("GridSweeper")
    return OmegaConf.to_container(sweeper.grid), OmegaConf.to_container(sweeper.params)


def jobs_of(grid: str, tmp_path: Path, *arguments: str) -> list[list[str]]:
    blocks, params = sweeper_of(grid, tmp_path)
    return grid_jobs(blocks, params, OverridesParser.create().parse_overrides(list(arguments)))


def parsed(job: list[str]) -> dict[str, str]:
    return dict(override.split("=", 1) for override in job)


@pytest.mark.parametrize("grid", GRIDS)
def test_grid_has_every_classification_method_once_per_divergence_it_takes(grid: str, tmp_path: Path) -> None:
    blocks, params = sweeper_of(grid, tmp_path)
    assert len(str(params["seed"]).split(",")) >= 3
    entries = [(method, block) for block in blocks for method in block["method"].split(",")]
    assert sorted(method for method, _ in entries) == sorted(CLASSIFICATION), "every classification method, once"
    for method, block in entries:
        open_slot = isinstance(CLASSIFICATION[method].slot, OpenSlot) and len(CLASSIFICATION[method].slot.names) != 1
        assert ("divergence" in block) == open_slot, f"{method}: swept over divergences iff it has an open slot"


@pytest.mark.parametrize("grid", GRIDS)
def test_every_job_of_the_grid_composes_and_builds(grid: str, tmp_path: Path) -> None:
    jobs = jobs_of(grid, tmp_path, "seed=0")
    assert len(jobs) == len(set(map(tuple, jobs))) == 6 * 4 + 10
    for job in jobs:
        assert_job(job, tmp_path, fixed=(f"experiment={grid}",))


def test_the_command_line_restricts_the_divergence_blocks_and_keeps_the_others(tmp_path: Path) -> None:
    jobs = [parsed(job) for job in jobs_of("grid_digits", tmp_path, "divergence=fkl,rkl,js", "trainer.max_epochs=5")]
    assert len(jobs) == (6 * 3 + 10) * 3
    assert {job.get("divergence") for job in jobs} == {"fkl", "rkl", "js", None}
    assert all(job["trainer.max_epochs"] == "5" for job in jobs) and {job["seed"] for job in jobs} == {"0", "1", "2"}
    only = [parsed(job) for job in jobs_of("grid_digits", tmp_path, "method=kd,scratch", "divergence=tvd", "seed=1")]
    assert only == [{"seed": "1", "method": "kd", "divergence": "tvd"}, {"seed": "1", "method": "scratch"}]
    with pytest.raises(HydraException, match="no job of the grid is left by method=gkd"):
        jobs_of("grid_digits", tmp_path, "method=gkd")


def test_grid_multirun_runs_the_union_of_its_blocks(outputs: Path) -> None:
    """`kdlab train -m experiment=grid_digits` through Hydra: the sweeper plugin is found and runs kd
    per divergence and scratch once."""
    kdlab("train", "-m", "experiment=grid_digits", "+method=kd,scratch", "divergence=fkl,rkl", "seed=0", "trainer.max_epochs=1",
          "teacher.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none", outputs=outputs)
    results = [json.loads(p.read_text()) for p in sorted((outputs / "multirun").rglob("results.json"))]
    assert sorted((r["method"], r["divergence"]) for r in results) == [("kd", "fkl"), ("kd", "rkl"), ("scratch", None)]
    assert all(r["status"] == "completed" for r in results)


def test_cifar_grid_published_numbers_are_sourced_or_say_why_not(tmp_path: Path) -> None:
    cfg = compose_with_hydra(["experiment=grid_cifar100"], tmp_path)
    table = OmegaConf.to_container(cfg.published_by_method)
    assert set(table) == set(CLASSIFICATION)
    for method, entry in table.items():
        assert entry["metric"] == "test/acc"
        if entry["value"] is None:
            assert entry["reason"], method
        else:
            assert 0.5 < entry["value"] < 0.8 and entry["source"], method
            assert entry.get("divergence") == ("fkl" if isinstance(CLASSIFICATION[method].slot, OpenSlot) else None)


def test_kdlab_report_prints_the_cifar_grid_published_numbers_beside_their_cells(tmp_path: Path) -> None:
    """Records of composed grid jobs (the config resolved as kdlab.run writes it) give a table with each
    paper's number next to the cell it was published for, and none elsewhere."""
    for number, job in enumerate(jobs_of("grid_cifar100", tmp_path, "seed=0", "method=kd,nd,scratch,ofa", "divergence=fkl,rkl")):
        cfg = compose_with_hydra(["experiment=grid_cifar100", *job], tmp_path)
        method = cfg.hydra.runtime.choices.method
        with open_dict(cfg):
            del cfg["hydra"]  # the job's own record has no hydra node; its `${hydra:...}` values still resolve
        config = OmegaConf.to_container(cfg, resolve=True)
        run_dir = tmp_path / "runs" / str(number)
        config["paths"] = {"output_dir": str(run_dir), "log_dir": str(tmp_path), "teacher_dir": str(tmp_path / "teachers")}
        write_json_atomic(run_dir / "results.json", {
            "run_name": config["run_name"], "method": method, "divergence": cfg.divergence.name,
            "model": cfg.model.name, "dataset": cfg.dataset.name, "seed": 0, "status": "completed",
            "metrics": {"test/acc": 0.7 + number / 100}, "config": config,
        })
    table = write_report([tmp_path / "runs"], tmp_path / "report").table
    assert table.loc["kd", "fkl"].endswith("[paper 0.7333]") and "[paper" not in table.loc["kd", "rkl"]
    assert table.loc["nd", "fkl"].endswith("[paper 0.7554]") and table.loc["scratch", "none"].endswith("[paper 0.7250]")
    assert "[paper" not in table.loc["ofa", "none"]
