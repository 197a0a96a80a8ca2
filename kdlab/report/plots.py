"""The report's figures, each drawn only when the runs logged what it needs; every one is drawn from
the same cells as the table (`cells.py`: distinct seeds, never pooled across config values).

- `heatmap`: the table, rows x columns (method x divergence by default): colour = mean, text =
  mean ± std and n per cell.
- `epoch_curves`: metrics per epoch from the runs' CSV logs (default `val/<metric>` and `train/loss`),
  one line per cell, mean ± std band over its seeds.
- `proxy_golden`: the teacher-hacking curves of `LMDistillModule` runs on oracle data (CSV columns
  `val/proxy_fkl`, `val/golden_fkl`, `val/proxy_rkl`, `val/golden_rkl`, `val/teacher_golden_fkl`,
  `val/teacher_golden_rkl`, `kdlab.oracle.plots.METRICS`) over training steps, one column per cell, mean over
  its seeds: teacher hacking is the proxy falling while the golden curve turns up.
- `reward_kl`: final `<split>/reward` against `<split>/kl_ref` per run (split `test`, else `val`; what
  `PolicyModule` logs on the known-reward task), with the upper-left Pareto frontier.

Figures are built with `matplotlib.figure.Figure` (the Agg canvas; no pyplot state, no display needed).
"""

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdlab.oracle.plots import METRICS as HACKING_METRICS
from kdlab.oracle.plots import hacking_figure
from kdlab.report.cells import Cell
from kdlab.report.table import in_order
from kdlab.results import write_atomic

FRONTIER_SPLITS = ("test", "val")
REWARD, KL_REF = "reward", "kl_ref"
HACKING_SPLIT = "val"


def save_png(figure: Figure, path: Path) -> Path:
    """Render `figure` as PNG and write it atomically to `path`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return path


def heatmap(summary: pd.DataFrame, rows: str, cols: str, metric: str) -> Figure | None:
    """Cells coloured by their mean `metric`, annotated `mean ± std` (std where n ≥ 2) and `n=`."""
    if summary.empty:
        return None
    frames = {name: in_order(summary.pivot(index=rows, columns="column", values=name)) for name in ("mean", "std", "n")}
    means = frames["mean"].to_numpy(dtype=float)
    figure = Figure(figsize=(1.6 + 1.7 * means.shape[1], 1.2 + 0.8 * means.shape[0]))
    axes = figure.add_subplot()
    image = axes.imshow(means, cmap="viridis", aspect="auto")
    low, high = np.nanmin(means), np.nanmax(means)
    for i, j in np.ndindex(means.shape):
        mean, std, n = means[i, j], frames["std"].iat[i, j], frames["n"].iat[i, j]
        if math.isnan(mean):
            continue
        text = f"{mean:.4f}" + ("" if math.isnan(std) else f"\n± {std:.4f}") + f"\nn={int(n)}"
        bright = high > low and (mean - low) / (high - low) > 0.6
        axes.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
    axes.set_xticks(range(means.shape[1]), [str(c) for c in frames["mean"].columns])
    axes.set_yticks(range(means.shape[0]), [str(r) for r in frames["mean"].index])
    axes.set_xlabel(cols)
    axes.set_ylabel(rows)
    axes.set_title(f"{metric}: mean ± std over n distinct seeds per cell\n(colour: mean; no std where n=1)", fontsize=10)
    figure.colorbar(image, ax=axes, label=f"mean {metric}")
    return figure


def per_epoch(history: pd.DataFrame, name: str) -> pd.Series:
    """`name` per epoch: its mean over the epoch's logged rows (one row for validation metrics)."""
    return history[["epoch", name]].dropna().groupby("epoch")[name].mean()


def histories(cells: Sequence[Cell], columns: Sequence[str]) -> dict[Cell, list[pd.DataFrame]]:
    """Per cell, the CSV logs of its runs that have every one of `columns`; cells without any left out."""
    found = {}
    for cell in cells:
        logs = [history for history in (run.history() for run in cell.runs) if history is not None and set(columns) <= set(history)]
        if logs:
            found[cell] = logs
    return found


def epoch_curves(cells: Sequence[Cell], names: Sequence[str]) -> Figure | None:
    """One panel per metric in `names` that some run's CSV has; per cell the mean over its seeds and a ± std band."""
    panels = {name: histories(cells, ["epoch", name]) for name in names}
    panels = {name: logs for name, logs in panels.items() if logs}
    if not panels:
        return None
    figure = Figure(figsize=(5.5 * len(panels), 4))
    for index, (name, logs) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for cell, cell_logs in logs.items():
            curves = pd.concat([per_epoch(history, name) for history in cell_logs], axis=1)
            mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=1).fillna(0.0)
            (line,) = axes.plot(mean.index, mean, marker="o", markersize=3, label=f"{cell.name} (n={len(cell_logs)})")
            axes.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(name)
        axes.set_title(f"{name} per epoch: mean ± std over n seeds", fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return figure


def proxy_golden(cells: Sequence[Cell]) -> Figure | None:
    """The teacher-hacking figure (`kdlab.oracle.plots.hacking_figure`) with one column per cell whose
    runs logged `val/<name>` for every name of `kdlab.oracle.plots.METRICS`: each curve the mean over
    the cell's seeds at each validation step."""
    columns = {f"{HACKING_SPLIT}/{name}": name for name in HACKING_METRICS}
    logs = histories(cells, ["step", *columns])
    if not logs:
        return None
    curves = {}
    for cell, cell_logs in logs.items():
        per_run = [history.dropna(subset=list(columns))[["step", *columns]].groupby("step", as_index=False).last() for history in cell_logs]
        mean = pd.concat(per_run).groupby("step", as_index=False).mean().rename(columns=columns)
        curves[f"{cell.name} (n={len(cell_logs)})"] = mean
    title = (f"{HACKING_SPLIT}/proxy_* (student vs teacher) and {HACKING_SPLIT}/golden_* (student vs oracle) per training step,"
             " mean over n seeds per cell")
    return hacking_figure(curves, title=title)


def pareto_frontier(points: np.ndarray) -> np.ndarray:
    """The points [N, 2] = (kl, reward) that no other point beats with less or equal KL and more
    reward, sorted by KL."""
    ordered = points[np.lexsort((-points[:, 1], points[:, 0]))]
    frontier, best = [], -np.inf
    for kl, reward in ordered:
        if reward > best:
            frontier.append((kl, reward))
            best = reward
    return np.array(frontier)


def reward_kl(cells: Sequence[Cell]) -> Figure | None:
    """Final `<split>/reward` against `<split>/kl_ref`, one point per run counted (one per seed of a
    cell, coloured by cell), and the Pareto frontier of all points."""
    for split in FRONTIER_SPLITS:
        reward, kl = f"{split}/{REWARD}", f"{split}/{KL_REF}"
        points = {cell: [(run.metric(kl), run.metric(reward)) for run in cell.runs] for cell in cells}
        points = {cell: [(x, y) for x, y in xy if x is not None and y is not None] for cell, xy in points.items()}
        points = {cell: xy for cell, xy in points.items() if xy}
        if points:
            break
    else:
        return None
    figure = Figure(figsize=(6, 4.5))
    axes = figure.add_subplot()
    for cell, xy in points.items():
        axes.scatter(*zip(*xy), label=f"{cell.name} (n={len(xy)})", s=28)
    frontier = pareto_frontier(np.array([point for xy in points.values() for point in xy]))
    axes.plot(frontier[:, 0], frontier[:, 1], color="black", linewidth=1, drawstyle="steps-post", label="Pareto frontier")
    axes.set_xlabel(f"{kl} (KL to the reference)")
    axes.set_ylabel(reward)
    axes.set_title(f"final {reward} vs {kl}: one point per run (distinct seeds)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure
