"""The results table: one cell per (row, column) value pair — method x divergence by default — with
the mean ± sample standard deviation of a metric over the cell's runs (its seeds), and the published
number where the runs' experiment names one."""

import math
from collections.abc import Sequence

import pandas as pd

from kdlab.report.collect import Run


def label(value: object) -> str:
    return "—" if value is None else str(value)


def natural(text: str) -> tuple[int, float, str]:
    """Sort key that puts numbers in numeric order (2 < 10) before other labels in text order."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def summarize(runs: Sequence[Run], metric: str, rows: str, cols: str) -> pd.DataFrame:
    """One line per cell: `rows`, `cols` (their values), n, mean, std (ddof=1; NaN for n=1), min, max,
    seeds, published, published_source, delta (= mean − published). Only completed runs that
    logged `metric` count; `unused(runs, metric)` lists the others."""
    cells: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.status == "completed" and run.metric(metric) is not None:
            cells.setdefault((label(run.get(rows)), label(run.get(cols))), []).append(run)
    lines = []
    for (row, col), members in sorted(cells.items(), key=lambda item: (natural(item[0][0]), natural(item[0][1]))):
        values = pd.Series([run.metric(metric) for run in members], dtype=float)
        published = {run.published(metric) for run in members} - {None}
        value, source = published.pop() if len(published) == 1 else (math.nan, "" if not published else "several")
        lines.append({
            rows: row, cols: col, "n": len(values), "mean": values.mean(), "std": values.std(ddof=1),
            "min": values.min(), "max": values.max(), "seeds": " ".join(sorted((label(run.get("seed")) for run in members), key=natural)),
            "published": value, "published_source": source, "delta": values.mean() - value,
        })
    columns = [rows, cols, "n", "mean", "std", "min", "max", "seeds", "published", "published_source", "delta"]
    return pd.DataFrame(lines, columns=columns)


def unused(runs: Sequence[Run], metric: str) -> list[tuple[Run, str]]:
    """The runs the table leaves out, each with the reason: failed, incomplete, or without `metric`."""
    left_out = []
    for run in runs:
        if run.status != "completed":
            left_out.append((run, f"{run.status}: {run.error or 'no error recorded'}"))
        elif run.metric(metric) is None:
            left_out.append((run, f"completed without {metric}"))
    return left_out


def format_cell(mean: float, std: float, n: int, published: float, show_n: bool = False, digits: int = 4) -> str:
    """`0.9528 ± 0.0040` (std for n ≥ 2 only), then ` (n=2)` if `show_n`, then ` [paper 0.7333]` if published."""
    text = f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")
    text += f" (n={n})" if show_n else ""
    return text + ("" if math.isnan(published) else f" [paper {published:.{digits}f}]")


def pivot(summary: pd.DataFrame, rows: str, cols: str) -> pd.DataFrame:
    """The table as printed: index = row values, columns = column values, cells = `format_cell` text
    (with each cell's n when the cells do not all have the same number of runs)."""
    if summary.empty:
        return pd.DataFrame()
    show_n = summary["n"].nunique() > 1
    text = summary.apply(lambda line: format_cell(line["mean"], line["std"], line["n"], line["published"], show_n), axis=1)
    table = summary.assign(text=text).pivot(index=rows, columns=cols, values="text").fillna("")
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
