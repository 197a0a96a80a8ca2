"""The results table: one line per cell (`cells.py`: method x divergence by default, split by variant
keys) with the mean ± sample standard deviation of a metric over the cell's distinct seeds, and the
published number where the runs' experiment names one; and the runs the table leaves out, with why."""

import math
from collections.abc import Callable, Sequence

import pandas as pd

from kdlab.report.cells import Cell, Cells, label, natural
from kdlab.report.collect import Run


def summarize(cells: Sequence[Cell], metric: str, rows: str, cols: str) -> pd.DataFrame:
    """One line per cell that has `metric`: `rows`, `cols` (their values), variant, n (distinct seeds),
    mean, std (ddof=1; NaN for n=1), min, max, seeds, published, published_source, delta
    (= mean − published). A cell's runs without `metric` are left out (`unused` lists them)."""
    lines = []
    for cell in cells:
        members = [run for run in cell.runs if run.metric(metric) is not None]
        if not members:
            continue
        values = pd.Series([run.metric(metric) for run in members], dtype=float)
        published = {run.published(metric) for run in members} - {None}
        value, source = published.pop() if len(published) == 1 else (math.nan, "" if not published else "several")
        lines.append({
            rows: cell.row, cols: cell.col, "variant": cell.variant, "column": cell.column, "n": len(values),
            "mean": values.mean(), "std": values.std(ddof=1), "min": values.min(), "max": values.max(),
            "seeds": " ".join(label(run.get("seed")) for run in members),
            "published": value, "published_source": source, "delta": values.mean() - value,
        })
    columns = [rows, cols, "variant", "column", "n", "mean", "std", "min", "max", "seeds", "published", "published_source", "delta"]
    return pd.DataFrame(lines, columns=columns)


def unused(runs: Sequence[Run], cells: Cells, metric: str, where: Callable[[Run], str]) -> list[tuple[Run, str]]:
    """The runs the table leaves out, each with the reason: failed, incomplete, invalid, an older
    repeat of a seed (`where(run)` names the run counted instead), or completed without `metric`."""
    repeats = {id(run): (newer, cell) for run, newer, cell in cells.repeats}
    left_out = []
    for run in runs:
        if run.status != "completed":
            left_out.append((run, f"{run.status}: {run.error or 'no error recorded'}"))
        elif id(run) in repeats:
            newer, cell = repeats[id(run)]
            left_out.append((run, f"repeat of seed {label(run.get('seed'))} in {cell.name}: the newer {where(newer)} is counted"))
        elif run.metric(metric) is None:
            left_out.append((run, run.without(metric)))
    return left_out


def format_cell(mean: float, std: float, n: int, published: float, show_n: bool = False, digits: int = 4) -> str:
    """`0.9528 ± 0.0040` (std for n ≥ 2 only), then ` (n=2)` if `show_n`, then ` [paper 0.7333]` if published."""
    text = f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")
    text += f" (n={n})" if show_n else ""
    return text + ("" if math.isnan(published) else f" [paper {published:.{digits}f}]")


def pivot(summary: pd.DataFrame, rows: str, cols: str) -> pd.DataFrame:
    """The table as printed: index = row values, columns = column values (with `[variant]`), cells =
    `format_cell` text (with each cell's n when the cells do not all have the same n)."""
    if summary.empty:
        return pd.DataFrame()
    show_n = summary["n"].nunique() > 1
    text = summary.apply(lambda line: format_cell(line["mean"], line["std"], line["n"], line["published"], show_n), axis=1)
    table = summary.assign(text=text).pivot(index=rows, columns="column", values="text").fillna("")
    table.columns.name = None
    return in_order(table)


def in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its index and columns in `natural` order."""
    return frame.loc[sorted(frame.index, key=natural), sorted(frame.columns, key=natural)]


def markdown(table: pd.DataFrame, index_name: str = "") -> str:
    """A GitHub Markdown table of `table`'s cells (its index as the first column)."""
    header = [index_name or (table.index.name or ""), *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for index, row in table.iterrows():
        cells = [str(index), *(str(value).replace("|", "\\|").replace("\n", " ") for value in row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
