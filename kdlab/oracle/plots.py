"""Proxy vs golden curves of the teacher-hacking protocol, per run and across a multirun.

Every validation of an `LMDistillModule` on oracle data logs the sequence-level KLs of the student
to the teacher (proxy: `val/proxy_fkl` = KL_seq(p_T ‖ q), `val/proxy_rkl` = KL_seq(q ‖ p_T)) and to
the oracle (golden: `val/golden_fkl`, `val/golden_rkl`). Teacher hacking is the proxy still falling
while the golden metric rises: the step where the golden curve is lowest is marked.

- `TeacherHackingPlot` (Lightning callback): the run's figure, `<run dir>/teacher_hacking.png` (and W&B).
- `multirun_teacher_hacking(sweep_dir)`: one colour per method and divergence, one column per data regime
  (offline, online), mean over seeds, from every completed run's `csv/metrics.csv` -> `<sweep dir>/teacher_hacking.png`;
  `MultirunTeacherHacking` (Hydra callback) calls it when a multirun ends.
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from omegaconf import DictConfig

from kdlab.run_logs import completed_curves

log = logging.getLogger(__name__)

FIGURE = "teacher_hacking.png"
METRICS = ("proxy_fkl", "golden_fkl", "proxy_rkl", "golden_rkl", "teacher_golden_fkl", "teacher_golden_rkl")
HACKING_RISE = 0.05  # golden ends > 5 % above its minimum while the proxy fell meanwhile: marked as hacking
ROWS = (("fkl", "forward KL$_{seq}$(target ‖ student)"), ("rkl", "reverse KL$_{seq}$(student ‖ target)"))
PROXY, GOLDEN = "#0072B2", "#D55E00"  # Okabe–Ito blue (teacher) and vermillion (oracle)
COLOURS = ["#CC79A7", "#D55E00", "#009E73", "#0072B2", "#E69F00", "#56B4E9", "#000000"]  # Okabe–Ito, one per run label


def hacking_figure(curves: Mapping[str, pd.DataFrame], title: str = "") -> Figure:
    """Rows: forward and reverse sequence KL; one column per label; proxy (to the teacher) and golden
    (to the oracle) against training steps, the teacher's own KL to the oracle dashed (the golden value
    of a student that copies the teacher); a dotted line at the golden minimum, the span after it shaded
    when the proxy kept falling while the golden metric ended `HACKING_RISE` above its minimum
    (teacher hacking; minimum and end read on a 3-point moving average). `curves`: label -> frame with `step` and `METRICS` columns."""
    columns = len(curves)
    figure = Figure(figsize=(3.4 * columns + 0.6, 5.6), layout="constrained")
    axes = figure.subplots(2, columns, sharex=True, squeeze=False)
    for col, (label, frame) in enumerate(curves.items()):
        for row, (kind, ylabel) in enumerate(ROWS):
            ax = axes[row, col]
            proxy, golden = frame[f"proxy_{kind}"], frame[f"golden_{kind}"]
            ax.plot(frame["step"], golden, color=GOLDEN, linewidth=1.8, marker="o", markersize=2.5, label="golden: student vs oracle")
            ax.plot(frame["step"], proxy, color=PROXY, linewidth=1.8, marker="o", markersize=2.5, label="proxy: student vs teacher")
            ax.axhline(frame[f"teacher_golden_{kind}"].iloc[-1], color="black", linestyle="--", linewidth=1, alpha=0.6,
                       label="teacher vs oracle")
            smooth = golden.rolling(3, center=True, min_periods=1).mean()  # one noisy evaluation neither makes nor hides a minimum
            best = smooth.idxmin()
            ax.axvline(frame["step"][best], color="grey", linestyle=":", linewidth=1)
            if proxy.iloc[-1] < proxy[best] and smooth.iloc[-1] > (1 + HACKING_RISE) * smooth[best]:
                ax.axvspan(frame["step"][best], frame["step"].iloc[-1], color=GOLDEN, alpha=0.07, linewidth=0)
                ax.annotate("hacking", xy=(frame["step"].iloc[-1], golden.iloc[-1]), xytext=(-4, 6), textcoords="offset points",
                            ha="right", fontsize=8, color=GOLDEN)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(ylabel + " [nats]", fontsize=9)
            if row == 0:
                ax.set_title(label, fontsize=10)
            if row == 1:
                ax.set_xlabel("training step")
    axes[0, 0].legend(fontsize=8, frameon=False, loc="upper right")
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


class TeacherHackingPlot(L.Callback):
    """Draws the run's validation history (an `LMDistillModule` on oracle data) after fitting."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = pd.DataFrame([entry for entry in getattr(pl_module, "history", []) if entry["split"] == "val"])
        if not trainer.is_global_zero or history.empty or not set(METRICS) <= set(history):
            return
        curve = history.drop_duplicates("step", keep="last").reset_index(drop=True)
        divergence = pl_module.objective.used_divergence().name
        regime = "online" if getattr(trainer.datamodule, "online", False) else "offline"
        path = Path(trainer.default_root_dir) / FIGURE
        hacking_figure({f"{divergence}, {regime} data": curve}, title="oracle → teacher → student").savefig(path, dpi=160)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="teacher_hacking", images=[str(path)])


def comparison_figure(curves: Mapping[str, Mapping[str, pd.DataFrame]], title: str = "") -> Figure:
    """Which divergence hacks the teacher: rows forward / reverse sequence KL, one column per data regime
    (offline, online), one colour per run label (method and divergence); golden solid with its minimum
    marked, proxy dashed, the teacher's own KL to the oracle black dashed. `curves`: regime -> label -> frame."""
    figure = Figure(figsize=(5.2 * len(curves) + 0.8, 6.2), layout="constrained")
    axes = figure.subplots(2, len(curves), sharex=True, sharey="row", squeeze=False)
    labels = sorted({label for runs in curves.values() for label in runs})
    colours = dict(zip(labels, COLOURS * (len(labels) // len(COLOURS) + 1)))
    for col, (regime, runs) in enumerate(curves.items()):
        for row, (kind, ylabel) in enumerate(ROWS):
            ax = axes[row, col]
            for label, frame in runs.items():
                golden = frame[f"golden_{kind}"]
                ax.plot(frame["step"], golden, color=colours[label], linewidth=1.9, label=f"{label}: golden")
                ax.plot(frame["step"], frame[f"proxy_{kind}"], color=colours[label], linewidth=1.2, linestyle="--", alpha=0.8, label=f"{label}: proxy")
                best = golden.rolling(3, center=True, min_periods=1).mean().idxmin()
                ax.plot(frame["step"][best], golden[best], marker="v", markersize=7, color=colours[label], markeredgecolor="black", markeredgewidth=0.5)
            ax.axhline(next(iter(runs.values()))[f"teacher_golden_{kind}"].iloc[-1], color="black", linestyle="--", linewidth=1, alpha=0.6)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(ylabel + " [nats]", fontsize=9)
            if row == 0:
                ax.set_title(f"{regime} data", fontsize=10)
            else:
                ax.set_xlabel("training step")
    handles = [Line2D([], [], color=colours[label], linewidth=2, label=label) for label in labels]
    handles += [Line2D([], [], color="grey", linewidth=1.9, label="golden: student vs oracle"),
                Line2D([], [], color="grey", linewidth=1.2, linestyle="--", label="proxy: student vs teacher"),
                Line2D([], [], color="grey", marker="v", linestyle="none", label="golden minimum"),
                Line2D([], [], color="black", linestyle="--", alpha=0.6, label="teacher vs oracle")]
    figure.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def multirun_teacher_hacking(sweep_dir: str | Path) -> Path | None:
    """Draw every completed oracle run under `sweep_dir` with `comparison_figure` (mean over seeds at each
    step) into `<sweep_dir>/teacher_hacking.png`; None when there is none."""
    sweep_dir = Path(sweep_dir)
    runs: dict[str, dict[str, list[pd.DataFrame]]] = {}
    for record, curve in completed_curves(sweep_dir, METRICS):
        online = (record.get("config") or {}).get("dataset", {}).get("datamodule", {}).get("online", False)
        label = f"{record.get('method')} {record.get('divergence')}"
        runs.setdefault("online" if online else "offline", {}).setdefault(label, []).append(curve)
    if not runs:
        return None
    curves = {regime: {label: pd.concat(frames).groupby("step", as_index=False).mean() for label, frames in sorted(by_label.items())}
              for regime, by_label in sorted(runs.items())}
    seeds = max(len(frames) for by_label in runs.values() for frames in by_label.values())
    path = sweep_dir / FIGURE
    comparison_figure(curves, title=f"oracle → teacher → student: proxy and golden KL by divergence ({seeds} seed{'s' if seeds > 1 else ''} each)").savefig(path, dpi=160)
    return path


class MultirunTeacherHacking(HydraCallback):
    """Hydra callback: `multirun_teacher_hacking(<sweep dir>)` once every job of a multirun has finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = multirun_teacher_hacking(config.hydra.sweep.dir)
        if path is not None:
            log.info("proxy vs golden curves of the multirun: %s", path)
