"""Collect the runs under run or multirun directories: every `results.json`, and every run directory
(`.hydra/config.yaml`) that has none because its job was killed or is still running.

A `results.json` that is not a kdlab record (empty, bad JSON, `null`, a list, another tool's JSON,
a completed record without metrics or config) becomes an "invalid" run that says why; reading never
raises, so one damaged file cannot stop a report.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from kdlab.results import RESULTS_FILE

IDENTITY = ("run_name", "method", "divergence", "model", "dataset", "seed")
STATUSES = ("completed", "failed")  # what kdlab.run writes into `status`
COMPLETED_FIELDS = ("run_name", "method", "seed", "metrics", "config")  # every completed kdlab record has them
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"
HYDRA_RUNTIME = Path(".hydra") / "hydra.yaml"
METRICS_CSV = Path("csv") / "metrics.csv"


class _Absent:
    """A field or config path the run does not have (unlike a value that is `null`)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def lookup(tree: Any, key: str) -> Any:
    """The value at dotted `key` (`objective.temperature`) in nested dicts, else ABSENT."""
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


@dataclass
class Run:
    """One run as its directory records it.

    `status` is "completed" or "failed" (from `results.json`), "incomplete" when the directory has
    no `results.json` (a killed job, or one still running), or "invalid" when its `results.json` is
    not a kdlab record. `record` is the `results.json` content; for an incomplete run, the identity
    read from its `.hydra/config.yaml`. `written` is the `results.json` modification time (seconds):
    of two runs of one seed, the newer is counted.
    """

    run_dir: Path
    status: str
    record: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    written: float = 0.0

    @property
    def metrics(self) -> dict[str, Any]:
        metrics = self.record.get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    @property
    def config(self) -> dict[str, Any]:
        config = self.record.get("config")
        return config if isinstance(config, dict) else {}

    def get(self, key: str) -> Any:
        """A field of the record (`method`, `seed`, `divergence_params.alpha`: what was built), else a
        dotted path in its config (`objective.temperature`); ABSENT when neither has it."""
        value = lookup({name: value for name, value in self.record.items() if name != "config"}, key)
        return value if value is not ABSENT and not isinstance(value, dict) else lookup(self.config, key)

    def metric(self, name: str) -> float | None:
        """The final value of `name`; None when it is absent, null, not a number, NaN or infinite."""
        value = self.metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)

    def without(self, name: str) -> str:
        """Why `metric(name)` is None, in words."""
        if name not in self.metrics:
            return f"completed without {name}"
        value = self.metrics[name]
        number = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        return f"completed with {name} = {json.dumps(value)}" + ("" if number else " (not a number)")

    def published(self, metric: str) -> tuple[float, str] | None:
        """The published (value, source) the run's experiment compares `metric` with, if any; none
        when the experiment says which divergence the number was for (`published.divergence`) and
        the run used another."""
        published = self.config.get("published")
        if not isinstance(published, dict) or published.get("metric") != metric or published.get("value") is None:
            return None
        if published.get("divergence") not in (None, self.get("divergence")):
            return None
        return float(published["value"]), str(published.get("source", ""))

    def overridden(self) -> set[str]:
        """The keys set on the run's command line (Hydra's `.hydra/overrides.yaml`: `trainer.max_epochs=5`
        gives `trainer.max_epochs`); empty when the file is missing or unreadable."""
        try:
            overrides = OmegaConf.to_container(OmegaConf.load(self.run_dir / HYDRA_OVERRIDES))
        except Exception:  # a missing or damaged file only loses a hint
            return set()
        if not isinstance(overrides, list):
            return set()
        return {str(item).partition("=")[0].lstrip("+~") for item in overrides}

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
    """A run from its `results.json`; a file that is not a kdlab record makes an invalid run that says why."""
    try:
        written, text = path.stat().st_mtime, path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        return Run(path.parent, "invalid", error=f"unreadable {RESULTS_FILE}: {error}")
    if not text.strip():
        return Run(path.parent, "invalid", error=f"empty {RESULTS_FILE}", written=written)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return Run(path.parent, "invalid", error=f"unreadable {RESULTS_FILE}: {error}", written=written)
    problem = record_problem(record)
    if problem:
        return Run(path.parent, "invalid", record if isinstance(record, dict) else {}, f"{RESULTS_FILE} {problem}", written)
    error = record.get("error") if record["status"] != "completed" else None
    return Run(path.parent, record["status"], record, error, written)


def record_problem(record: Any) -> str | None:
    """Why `record` (a parsed `results.json`) is not a kdlab record, or None when it is one."""
    if not isinstance(record, dict):
        return f"holds {json.dumps(record) if record is None else type(record).__name__}, not a kdlab record"
    if record.get("status") not in STATUSES:
        return f"is not a kdlab record: status {json.dumps(record.get('status'))}, expected one of {', '.join(STATUSES)}"
    if record["status"] == "completed":
        missing = [name for name in COMPLETED_FIELDS if record.get(name) is None]
        if missing:
            return f"is a completed record without {', '.join(missing)}"
        wrong = [name for name in ("metrics", "config") if not isinstance(record[name], dict)]
        if wrong:
            return f"is a completed record whose {', '.join(wrong)} is not a mapping"
    return None


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
    if not isinstance(config, dict):
        return Run(run_dir, "incomplete", error=f"no {RESULTS_FILE}; {HYDRA_CONFIG} is not a mapping")
    divergence = config.get("divergence")
    record = {
        "method": composed_method(run_dir),
        "divergence": divergence.get("name") if isinstance(divergence, dict) else divergence,
        "model": lookup(config, "model.name"),
        "dataset": lookup(config, "dataset.name"),
        "seed": config.get("seed"),
        "config": config,
    }
    record = {name: value for name, value in record.items() if value is not ABSENT}
    return Run(run_dir, "incomplete", record, f"no {RESULTS_FILE} (the job was killed, or is still running)")
