"""`kdlab report PATH...`: a grid's runs turned into the table and figures a paper prints.

`write_report` collects every run under the given directories (`collect.py`), builds the
method x divergence table of one metric, mean ± std over seeds, with published numbers
(`table.py`), and draws whichever figures the logged metrics allow (`plots.py`). It writes, each file
atomically, into the output directory:

    table.csv    one line per cell: n, mean, std, min, max, seeds, published, delta
    runs.csv     one line per run: directory, status, identity, error, every final metric
    report.md    the table, the runs left out of it (failed, incomplete, metric missing), the figures
    *.png        heatmap, curves (per epoch), proxy_golden, reward_kl — where their metrics exist

Failed and incomplete runs never stop a report: they are listed with their error.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from kdlab.report import plots
from kdlab.report.collect import IDENTITY, Run, collect
from kdlab.report.table import label, markdown, pivot, summarize, unused
from kdlab.results import write_atomic


@dataclass
class Report:
    """What `write_report` found and wrote."""

    runs: list[Run]
    summary: pd.DataFrame
    table: pd.DataFrame
    left_out: list[tuple[Run, str]]
    out: Path
    files: list[Path] = field(default_factory=list)

    def where(self, run: Run) -> str:
        """The run's directory relative to the directory that holds all the runs."""
        root = os.path.commonpath([r.run_dir for r in self.runs]) if len(self.runs) > 1 else run.run_dir.parent
        return os.path.relpath(run.run_dir, root)


def default_curves(metric: str) -> list[str]:
    """The metric's validation counterpart per epoch (`test/acc` -> `val/acc`) and the training loss."""
    split, _, name = metric.partition("/")
    return [f"val/{name}" if name and split in ("test", "val") else metric, "train/loss"]


def write_report(
    paths: Sequence[Path],
    out: Path | None = None,
    metric: str = "test/acc",
    rows: str = "method",
    cols: str = "divergence",
    curves: Sequence[str] | None = None,
) -> Report:
    """Collect the runs under `paths` and write the report files into `out` (default `<paths[0]>/report`)."""
    if not paths:
        raise ValueError("kdlab report needs at least one run or multirun directory")
    if rows == cols:
        raise ValueError(f"rows and columns are both {rows!r}: choose two different fields")
    runs = collect([Path(path) for path in paths])
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    summary = summarize(runs, metric, rows, cols)
    table = pivot(summary, rows, cols)
    report = Report(runs, summary, table, unused(runs, metric), out)

    report.files.append(_write(out / "table.csv", summary.to_csv(index=False)))
    report.files.append(_write(out / "runs.csv", runs_frame(runs, metric).to_csv(index=False)))
    figures = {
        "heatmap": plots.heatmap(summary, rows, cols, metric),
        "curves": plots.epoch_curves(runs, rows, cols, curves or default_curves(metric)),
        "proxy_golden": plots.proxy_golden(runs, rows, cols),
        "reward_kl": plots.reward_kl(runs, rows, cols),
    }
    drawn = [plots.save_png(figure, out / f"{name}.png") for name, figure in figures.items() if figure is not None]
    report.files.append(_write(out / "report.md", markdown_report(report, metric, rows, cols, drawn)))
    report.files.extend(drawn)
    return report


def runs_frame(runs: Sequence[Run], metric: str) -> pd.DataFrame:
    """One line per run: its directory, status, identity, `metric`, error, then every final metric."""
    lines = []
    for run in runs:
        identity = {key: run.get(key) for key in IDENTITY}
        lines.append({"run_dir": str(run.run_dir), "status": run.status, **identity, metric: run.metric(metric),
                      "error": run.error, **{name: value for name, value in sorted(run.metrics.items()) if name != metric}})
    return pd.DataFrame(lines)


def markdown_report(report: Report, metric: str, rows: str, cols: str, figures: Sequence[Path]) -> str:
    counted = int(report.summary["n"].sum()) if not report.summary.empty else 0
    parts = [f"# kdlab report: {metric}\n",
             f"{len(report.runs)} runs; {counted} in the table (mean ± std over seeds; rows {rows}, columns {cols}).\n"]
    parts.append(markdown(report.table, rows) if not report.table.empty else f"No completed run logged `{metric}`.\n")
    if report.left_out:
        parts.append("\n## Runs left out\n")
        lines = pd.DataFrame([{"run": report.where(run), "method": label(run.get("method")),
                               "divergence": label(run.get("divergence")), "seed": label(run.get("seed")),
                               "reason": reason} for run, reason in report.left_out]).set_index("run")
        parts.append(markdown(lines, "run"))
    if figures:
        parts.append("\n## Figures\n")
        parts.extend(f"![{path.stem}]({path.name})\n" for path in figures)
    return "\n".join(parts)


def print_report(report: Report, metric: str, rows: str, console: Console | None = None) -> None:
    """The table and the runs left out, in the terminal."""
    console = console or Console()
    table = Table(title=f"{metric} (mean ± std over seeds)", title_justify="left")
    table.add_column(rows)
    for column in report.table.columns:
        table.add_column(str(column), justify="right")
    for index, row in report.table.iterrows():
        table.add_row(str(index), *map(str, row))
    console.print(table if not report.table.empty else f"No completed run logged {metric}.")
    if report.left_out:
        failed = Table(title="runs left out of the table", title_justify="left")
        for column in ("run", "method", "divergence", "seed", "reason"):
            failed.add_column(column, overflow="fold")
        for run, reason in report.left_out:
            failed.add_row(report.where(run), label(run.get("method")), label(run.get("divergence")),
                           label(run.get("seed")), reason)
        console.print(failed)
    console.print(f"report written to {report.out}: " + ", ".join(path.name for path in report.files))


def _write(path: Path, text: str) -> Path:
    write_atomic(path, text)
    return path
