"""The records and per-step logs of finished runs, as the multirun figures (teacher hacking, the
known-reward trade-off) read them from a sweep directory."""

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from kdlab.results import RESULTS_FILE

METRICS_CSV = Path("csv") / "metrics.csv"


def completed_curves(sweep_dir: str | Path, metrics: Sequence[str]) -> Iterator[tuple[dict, pd.DataFrame]]:
    """`(record, curve)` of every completed run directly under `sweep_dir` whose `csv/metrics.csv` logged
    every `val/<metric>`: `record` is its results.json, `curve` has the columns `step` and `metrics`
    (named without `val/`), one row per step (the step's last logged value)."""
    columns = {f"val/{name}": name for name in metrics}
    for results in sorted(Path(sweep_dir).glob(f"*/{RESULTS_FILE}")):
        record = json.loads(results.read_text())
        log = results.parent / METRICS_CSV
        if record.get("status") != "completed" or not log.exists():
            continue
        frame = pd.read_csv(log)
        if not set(columns) <= set(frame.columns):
            continue
        curve = frame.dropna(subset=list(columns))[["step", *columns]].rename(columns=columns)
        yield record, curve.groupby("step", as_index=False).last()
