"""`kdlab report PATH...`: a grid's runs turned into the table and figures a paper prints.

`write_report` collects every run under the given directories (`collect.py`), keeps those that match
`--where KEY=VALUE`, groups the completed ones into cells (`cells.py`: the pooling rule, distinct
seeds), builds the rows x columns table of one metric, mean ± std over each cell's seeds, with
published numbers (`table.py`), and draws whichever figures the logged metrics allow (`plots.py`).
It writes, each file atomically, into the output directory:

    table.csv    one line per cell: rows, cols, variant, n, mean, std, min, max, seeds, published, delta
    runs.csv     one line per run: directory, status, identity, the cell it counts in or why not, every final metric
    report.md    the table, the notes (variant keys, repeated seeds, --where), the runs left out, the figures
    *.png        heatmap, curves (per epoch), proxy_golden, reward_kl — where their metrics exist

Failed, incomplete and invalid runs (a results.json that is not a kdlab record) never stop a report:
they are listed with the reason.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdlab.errors import ConfigError, DataError
from kdlab.report import plots
from kdlab.report.cells import ABSENT, Cell, Cells, check_axis, group, label, parse_where, select
from kdlab.report.collect import IDENTITY, Run, collect
from kdlab.report.table import markdown, pivot, summarize, unused
from kdlab.results import write_atomic

LEFT_OUT_COLUMNS = ("run", "method", "divergence", "seed", "reason")


@dataclass
class Report:
    """What `write_report` found, decided and wrote."""

    runs: list[Run]  # every run found under the paths
    selected: list[Run]  # those that match --where
    cells: Cells
    summary: pd.DataFrame
    table: pd.DataFrame
    left_out: list[tuple[Run, str]]
    notes: list[str]
    title: str
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
    where: Sequence[str] = (),
) -> Report:
    """Collect the runs under `paths` and write the report files into `out` (default `<paths[0]>/report`).

    `where`: conditions `KEY=VALUE` (a results.json field or config path) every counted run meets.
    Raises DataError when there is no run under `paths`, ConfigError for options that match nothing."""
    if not paths:
        raise ConfigError("kdlab report needs at least one run or multirun directory")
    if rows == cols:
        raise ConfigError(f"--rows and --cols are both {rows!r}: choose two different fields")
    conditions = parse_where(where)
    runs = collect([Path(path) for path in paths])
    if not runs:
        raise DataError(f"no runs found under {', '.join(map(str, paths))}: no results.json and no run directory "
                        f"(.hydra/config.yaml) below it")
    selected = select(runs, conditions)
    check_axis(selected, "--rows", rows)
    check_axis(selected, "--cols", cols)
    cells = group(selected, rows, cols)
    summary = summarize(cells.cells, metric, rows, cols)
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    report = Report(runs, selected, cells, summary, pivot(summary, rows, cols), [], [], table_title(summary, metric), out)
    report.left_out = unused(selected, cells, metric, report.where)
    report.notes = notes(report, metric, rows, cols, where)

    report.files.append(_write(out / "table.csv", summary.drop(columns="column").to_csv(index=False)))
    report.files.append(_write(out / "runs.csv", runs_frame(report, metric).to_csv(index=False)))
    figures = {
        "heatmap": plots.heatmap(summary, rows, cols, metric),
        "curves": plots.epoch_curves(cells.cells, curves or default_curves(metric)),
        "proxy_golden": plots.proxy_golden(cells.cells),
        "reward_kl": plots.reward_kl(cells.cells),
    }
    drawn = [plots.save_png(figure, out / f"{name}.png") for name, figure in figures.items() if figure is not None]
    report.files.append(_write(out / "report.md", markdown_report(report, rows, cols, drawn)))
    report.files.extend(drawn)
    return report


def table_title(summary: pd.DataFrame, metric: str) -> str:
    """What the table shows: the metric, mean ± sample std over distinct seeds, and n."""
    n = summary["n"].unique() if not summary.empty else []
    count = f"n={n[0]} seed{'s' if n[0] > 1 else ''} per cell" if len(n) == 1 else "n per cell shown"
    return f"{metric}: mean ± std over distinct seeds ({count}; no std where n=1)"


def notes(report: Report, metric: str, rows: str, cols: str, where: Sequence[str]) -> list[str]:
    """What the reader must know to read the table: --where, keys that split cells, repeated seeds, an empty table."""
    found = []
    if where:
        found.append(f"{len(report.selected)} of {len(report.runs)} runs match {' '.join(f'--where {w}' for w in where)}.")
    keys = report.cells.variant_keys
    if keys:
        overridden = set().union(*(run.overridden() for cell in report.cells.cells for run in cell.runs))
        key = next((key for key in keys if key in overridden), keys[0])  # what the user set, not what follows from it
        found.append(f"Runs of one cell differ in {', '.join(keys)}: they are not pooled; each setting is its own cell, "
                     f"marked [{', '.join(f'{k}=...' for k in keys)}]. Keep one setting with --where {key}=VALUE, or make "
                     f"it an axis with --rows {key} or --cols {key}.")
    repeats: dict[int, tuple[Run, Cell, list[Run]]] = {}
    for older, newer, cell in report.cells.repeats:
        repeats.setdefault(id(newer), (newer, cell, []))[2].append(older)
    for newer, cell, older in repeats.values():
        found.append(f"Seed {label(newer.get('seed'))} of {cell.name} ran {len(older) + 1} times: only the newest completed run "
                     f"({report.where(newer)}) is counted; the older "
                     f"{'run is' if len(older) == 1 else f'{len(older)} runs are'} listed under runs left out.")
    if report.table.empty:
        found.append(empty_table(report.selected, metric))
    return found


def empty_table(runs: Sequence[Run], metric: str) -> str:
    """Why the table is empty: no completed run, or none that logged `metric` (and what they logged)."""
    completed = [run for run in runs if run.status == "completed"]
    if not completed:
        return f"No completed run: the table of {metric} is empty."
    logged = sorted({name for run in completed for name in run.metrics})
    return f"No completed run logged {metric}; they logged: {', '.join(logged) or 'nothing'} (choose one with --metric)."


def runs_frame(report: Report, metric: str) -> pd.DataFrame:
    """One line per run: directory, status, identity, `metric`, the cell it counts in (or why it does
    not), error, then every final metric."""
    counted = {id(run): cell.name for cell in report.cells.cells for run in cell.runs}
    reasons = {id(run): reason for run, reason in report.left_out}
    selected = {id(run) for run in report.selected}
    lines = []
    for run in report.runs:
        identity = {key: None if run.get(key) is ABSENT else run.get(key) for key in IDENTITY}
        reason = reasons.get(id(run), "" if id(run) in selected else "does not match --where")
        lines.append({"run_dir": str(run.run_dir), "status": run.status, **identity, metric: run.metric(metric),
                      "cell": counted.get(id(run), "") if not reason else "", "left_out": reason, "error": run.error,
                      **{name: value for name, value in sorted(run.metrics.items()) if name != metric}})
    return pd.DataFrame(lines)


def left_out_rows(report: Report) -> list[list[str]]:
    return [[report.where(run), label(run.get("method")), label(run.get("divergence")), label(run.get("seed")), reason]
            for run, reason in report.left_out]


def markdown_report(report: Report, rows: str, cols: str, figures: Sequence[Path]) -> str:
    counted = int(report.summary["n"].sum()) if not report.summary.empty else 0
    parts = [f"# kdlab report: {report.title}\n",
             f"{len(report.runs)} runs; {counted} in the table (rows {rows}, columns {cols}). Runs are pooled in a cell only "
             f"when their configs agree on everything but the seed, the two axes and bookkeeping (paths, names, loggers); "
             f"each seed counts once.\n"]
    if not report.table.empty:
        parts.append(markdown(report.table, rows))
    if report.notes:
        parts.append("\n## Notes\n")
        parts.extend(f"- {note}" for note in report.notes)
    if report.left_out:
        parts.append("\n## Runs left out\n")
        parts.append(markdown(pd.DataFrame(left_out_rows(report), columns=LEFT_OUT_COLUMNS).set_index("run"), "run"))
    if figures:
        parts.append("\n## Figures\n")
        parts.extend(f"![{path.stem}]({path.name})\n" for path in figures)
    return "\n".join(parts)


def print_report(report: Report, rows: str, console: Console | None = None) -> None:
    """The table, the notes and the runs left out, in the terminal."""
    console = console or Console()
    if not report.table.empty:
        console.print(report.title, markup=False, highlight=False)
        table = Table()
        table.add_column(escape(rows))
        for column in report.table.columns:
            table.add_column(escape(str(column)), justify="right")
        for index, row in report.table.iterrows():
            table.add_row(escape(str(index)), *(escape(str(value)) for value in row))
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    if report.left_out:
        failed = Table(title="runs left out of the table", title_justify="left")
        for column in LEFT_OUT_COLUMNS:
            failed.add_column(column, overflow="fold")
        for line in left_out_rows(report):
            failed.add_row(*map(escape, line))
        console.print(failed)
    console.print(f"report written to {report.out}: " + ", ".join(path.name for path in report.files))


def _write(path: Path, text: str) -> Path:
    write_atomic(path, text)
    return path
