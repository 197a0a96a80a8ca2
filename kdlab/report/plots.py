"""The report's figures, each drawn only when the runs logged what it needs.

- `heatmap`: the table's means, rows x columns (method x divergence by default).
- `epoch_curves`: metrics per epoch from the runs' CSV logs, one line per cell, mean ± std band over seeds.
- `proxy_golden`: for every CSV column pair `.../proxy/<name>` and `.../golden/<name>` (the oracle
  experiment's student–teacher and student–oracle distances), both over steps: teacher hacking is
  the proxy falling while the golden curve turns up.
- `reward_kl`: final `<split>/reward` against `<split>/kl_ref` per run (split `test`, else `val`),
  with the upper-left Pareto frontier: the alignment trade-off between reward and drift from the reference.

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

from kdlab.report.collect import Run
from kdlab.report.table import in_order, label
from kdlab.results import write_atomic

FRONTIER_SPLITS = ("test", "val")
REWARD, KL_REF = "reward", "kl_ref"


def save_png(figure: Figure, path: Path) -> Path:
    """Render `figure` as PNG and write it atomically to `path`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return path


def heatmap(summary: pd.DataFrame, rows: str, cols: str, metric: str) -> Figure | None:
    """Cells coloured by their mean `metric`, annotated `mean ± std`."""
    if summary.empty:
        return None
    means = in_order(summary.pivot(index=rows, columns=cols, values="mean"))
    stds = in_order(summary.pivot(index=rows, columns=cols, values="std"))
    figure = Figure(figsize=(1.6 + 1.5 * means.shape[1], 1.2 + 0.7 * means.shape[0]))
    axes = figure.add_subplot()
    image = axes.imshow(means.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    low, high = np.nanmin(means.to_numpy(dtype=float)), np.nanmax(means.to_numpy(dtype=float))
    for i, j in np.ndindex(means.shape):
        mean, std = means.iat[i, j], stds.iat[i, j]
        if math.isnan(mean):
            continue
        text = f"{mean:.4f}" + ("" if math.isnan(std) else f"\n± {std:.4f}")
        bright = high > low and (mean - low) / (high - low) > 0.6
        axes.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
    axes.set_xticks(range(means.shape[1]), [str(c) for c in means.columns])
    axes.set_yticks(range(means.shape[0]), [str(r) for r in means.index])
    axes.set_xlabel(cols)
    axes.set_ylabel(rows)
    axes.set_title(f"{metric}: mean ± std over seeds")
    figure.colorbar(image, ax=axes, label=metric)
    return figure


def per_epoch(history: pd.DataFrame, name: str) -> pd.Series:
    """`name` per epoch: its mean over the epoch's logged rows (one row for validation metrics)."""
    return history[["epoch", name]].dropna().groupby("epoch")[name].mean()


def epoch_curves(runs: Sequence[Run], rows: str, cols: str, names: Sequence[str]) -> Figure | None:
    """One panel per metric in `names` that some run's CSV has; per cell the mean over runs and a ± std band."""
    histories = [(run, run.history()) for run in runs if run.status == "completed"]
    histories = [(run, history) for run, history in histories if history is not None and "epoch" in history]
    names = [name for name in names if any(name in history for _, history in histories)]
    if not names:
        return None
    figure = Figure(figsize=(5.5 * len(names), 4))
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        cells: dict[str, list[pd.Series]] = {}
        for run, history in histories:
            if name in history:
                cells.setdefault(f"{label(run.get(rows))} · {label(run.get(cols))}", []).append(per_epoch(history, name))
        for cell, series in sorted(cells.items()):
            curves = pd.concat(series, axis=1)
            mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=1).fillna(0.0)
            (line,) = axes.plot(mean.index, mean, marker="o", markersize=3, label=f"{cell} (n={len(series)})")
            axes.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(name)
        axes.set_title(f"{name} per epoch (mean ± std)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return figure


def proxy_golden_pairs(columns: Sequence[str]) -> list[tuple[str, str]]:
    """(proxy, golden) column pairs: `a/proxy/b` with `a/golden/b` (any prefix and suffix)."""
    pairs = []
    for column in columns:
        parts = column.split("/")
        if "proxy" in parts:
            golden = "/".join("golden" if part == "proxy" else part for part in parts)
            if golden in columns:
                pairs.append((column, golden))
    return sorted(pairs)


def proxy_golden(runs: Sequence[Run], rows: str, cols: str) -> Figure | None:
    """Per (proxy, golden) pair, both over training steps, mean per cell: proxy dashed, golden solid."""
    histories = [(run, run.history()) for run in runs if run.status in ("completed", "incomplete")]
    histories = [(run, history) for run, history in histories if history is not None and "step" in history]
    pairs = sorted({pair for _, history in histories for pair in proxy_golden_pairs(list(history.columns))})
    if not pairs:
        return None
    figure = Figure(figsize=(5.5 * len(pairs), 4))
    for index, (proxy, golden) in enumerate(pairs):
        axes = figure.add_subplot(1, len(pairs), index + 1)
        cells: dict[str, list[pd.DataFrame]] = {}
        for run, history in histories:
            if proxy in history and golden in history:
                curves = history.groupby("step")[[proxy, golden]].mean().dropna(how="all")
                cells.setdefault(f"{label(run.get(rows))} · {label(run.get(cols))}", []).append(curves)
        for cell, curves in sorted(cells.items()):
            mean = pd.concat(curves).groupby(level=0).mean()
            (line,) = axes.plot(mean.index, mean[golden], label=f"{cell}: golden")
            axes.plot(mean.index, mean[proxy], linestyle="--", color=line.get_color(), label=f"{cell}: proxy")
        axes.set_xlabel("step")
        axes.set_ylabel(golden.replace("golden", "{proxy, golden}"))
        axes.set_title(f"{proxy} (dashed) vs {golden} (solid)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return figure


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


def reward_kl(runs: Sequence[Run], rows: str, cols: str) -> Figure | None:
    """Final reward against KL to the reference, one point per run coloured by cell, and the frontier."""
    for split in FRONTIER_SPLITS:
        reward, kl = f"{split}/{REWARD}", f"{split}/{KL_REF}"
        points = [(run, run.metric(kl), run.metric(reward)) for run in runs if run.status == "completed"]
        points = [(run, x, y) for run, x, y in points if x is not None and y is not None]
        if points:
            break
    else:
        return None
    figure = Figure(figsize=(6, 4.5))
    axes = figure.add_subplot()
    cells: dict[str, list[tuple[float, float]]] = {}
    for run, x, y in points:
        cells.setdefault(f"{label(run.get(rows))} · {label(run.get(cols))}", []).append((x, y))
    for cell, xy in sorted(cells.items()):
        axes.scatter(*zip(*xy), label=cell, s=28)
    frontier = pareto_frontier(np.array([(x, y) for _, x, y in points]))
    axes.plot(frontier[:, 0], frontier[:, 1], color="black", linewidth=1, drawstyle="steps-post", label="frontier")
    axes.set_xlabel(f"{kl} (KL to the reference)")
    axes.set_ylabel(reward)
    axes.set_title("reward–KL frontier")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure
