"""Collect the runs under run or multirun directories: every `results.json`, and every run directory
(`.hydra/config.yaml`) that has none because its job was killed or is still running."""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from kdlab.results import RESULTS_FILE

IDENTITY = ("run_name", "method", "divergence", "model", "dataset", "seed")
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
HYDRA_RUNTIME = Path(".hydra") / "hydra.yaml"
METRICS_CSV = Path("csv") / "metrics.csv"


@dataclass
class Run:
    """One run as its directory records it.

    `status` is "completed" or "failed" (from `results.json`), or "incomplete" when the directory
    has no `results.json` (a killed job, or one still running). `record` is the `results.json`
    content; for an incomplete run, the identity read from its `.hydra/config.yaml`.
    """

    run_dir: Path
    status: str
    record: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return self.record.get("metrics") or {}

    def get(self, key: str) -> Any:
        """A top-level field of the record (`method`, `seed`, ...), else a dotted path in its config
        (`objective.temperature`); None when absent."""
        if key in self.record and not isinstance(self.record[key], dict):
            return self.record[key]
        node: Any = self.record.get("config") or {}
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None or not math.isfinite(value) else float(value)

    def published(self, metric: str) -> tuple[float, str] | None:
        """The published (value, source) the run's experiment compares `metric` with, if any; none
        when the experiment says which divergence the number was for (`published.divergence`) and
        the run used another."""
        published = (self.record.get("config") or {}).get("published") or {}
        if published.get("metric") != metric or published.get("value") is None:
            return None
        if published.get("divergence") not in (None, self.get("divergence")):
            return None
        return float(published["value"]), str(published.get("source", ""))

    def history(self) -> pd.DataFrame | None:
        """The run's CSV log (`csv/metrics.csv`: one row per logging step, columns epoch, step, metrics)."""
        path = self.run_dir / METRICS_CSV
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            return None


def collect(paths: list[Path]) -> list[Run]:
    """Every run under `paths` (run directories or any directory above them), sorted by directory."""
    runs: dict[Path, Run] = {}
    for path in paths:
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory: give kdlab report run or multirun directories")
        for results in path.rglob(RESULTS_FILE):
            runs.setdefault(results.parent, read_results(results))
        for config in path.rglob(str(HYDRA_CONFIG)):
            run_dir = config.parent.parent
            if run_dir not in runs:
                runs[run_dir] = read_incomplete(run_dir)
    return [runs[run_dir] for run_dir in sorted(runs)]


def read_results(path: Path) -> Run:
    """A run from its `results.json`; an unreadable file makes a failed run that says so."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return Run(path.parent, "failed", error=f"unreadable {RESULTS_FILE}: {error}")
    status = record.get("status", "failed")
    error = record.get("error") if status != "completed" else None
    return Run(path.parent, status, record, error)


def composed_method(run_dir: Path) -> str | None:
    """The method preset the run composed (Hydra's `runtime.choices.method` in `.hydra/hydra.yaml`)."""
    try:
        return OmegaConf.load(run_dir / HYDRA_RUNTIME).hydra.runtime.choices.get("method")
    except Exception:  # a half-written or foreign file must not stop the report
        return None


def read_incomplete(run_dir: Path) -> Run:
    """A run without `results.json`, identified from the config Hydra saved when it started."""
    try:
        config = OmegaConf.to_container(OmegaConf.load(run_dir / HYDRA_CONFIG), resolve=False)
    except Exception as error:  # a half-written or foreign config must not stop the report
        return Run(run_dir, "incomplete", error=f"no {RESULTS_FILE}; unreadable {HYDRA_CONFIG}: {error}")
    divergence = config.get("divergence")
    record = {
        "method": composed_method(run_dir),
        "divergence": divergence.get("name") if isinstance(divergence, dict) else divergence,
        "model": (config.get("model") or {}).get("name"),
        "dataset": (config.get("dataset") or {}).get("name"),
        "seed": config.get("seed"),
        "config": config,
    }
    return Run(run_dir, "incomplete", record, f"no {RESULTS_FILE} (the job was killed, or is still running)")
