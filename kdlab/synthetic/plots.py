"""The reward–KL–diversity trade-off of a preference or policy run (the known-reward benchmark's, or any
run with a `reward=`), per run and across a multirun.

Each evaluation of a `PolicyModule` or `OnPolicyModule` (step 0 = the reference, then every
validation) gives one point: the reward `val/reward` (true or given) against `val/kl_ref` (sequence
KL(π‖π_ref), k1 estimate) and against `val/entropy` (Monte-Carlo sequence entropy, the diversity the
f-DPO paper trades reward against).
A run's trajectory is one line; the final test evaluation is a star.

- `TradeoffPlot` (Lightning callback): the run's own figure, `<run dir>/reward_kl.png`, also logged to W&B.
- `multirun_tradeoff(sweep_dir)`: one line per divergence (mean over seeds) from every completed run's
  `csv/metrics.csv`, written to `<sweep dir>/reward_kl.png`; `MultirunTradeoff` (Hydra callback) calls it
  when a multirun ends, `kdlab report` may call it too.
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
from omegaconf import DictConfig

from kdlab.run_logs import completed_curves

log = logging.getLogger(__name__)

FIGURE = "reward_kl.png"
COLUMNS = ("step", "reward", "kl_ref", "entropy")
# One colour per divergence, the same in every figure (Okabe–Ito, colour-blind safe).
COLOURS = {"rkl": "#D55E00", "js": "#009E73", "alpha": "#0072B2", "fkl": "#CC79A7", "kl": "#CC79A7"}
OTHER_COLOURS = ("#E69F00", "#56B4E9", "#F0E442", "#000000")
PANELS = (("kl_ref", "KL(π ‖ π_ref) [nats]"), ("entropy", "entropy of samples [nats]"))


def tradeoff_figure(curves: Mapping[str, pd.DataFrame], finals: Mapping[str, pd.Series] | None = None, title: str = "") -> Figure:
    """Two panels, true reward against KL to the reference and against sample entropy.

    `curves`: label -> frame with columns `COLUMNS` (one row per evaluation, in step order);
    `finals`: label -> the final test point (same columns without step), drawn as a star.
    """
    figure = Figure(figsize=(9.5, 3.9), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    extra = iter(OTHER_COLOURS)
    colours = {label: COLOURS.get(label.split(" ")[0]) or next(extra, "grey") for label in curves}
    for ax, (column, xlabel) in zip(axes, PANELS):
        for label, frame in curves.items():
            ax.plot(frame[column], frame["reward"], marker="o", markersize=3.5, linewidth=1.6, alpha=0.9,
                    color=colours[label], label=label)
            ax.plot(frame[column].iloc[0], frame["reward"].iloc[0], marker="s", markersize=6, color="black", zorder=3)
            if finals and label in finals:
                ax.plot(finals[label][column], finals[label]["reward"], marker="*", markersize=13, color=colours[label],
                        markeredgecolor="black", markeredgewidth=0.6, zorder=4)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("true reward (mean over samples)")
    axes[1].invert_xaxis()  # diversity lost to the right, as KL gained in the left panel
    axes[0].plot([], [], marker="s", color="black", linestyle="none", label="reference (SFT)")
    axes[0].plot([], [], marker="*", markersize=10, color="white", markeredgecolor="black", linestyle="none", label="final (test)")
    axes[0].legend(fontsize=8, frameon=False, loc="lower right")
    axes[0].set_title("reward vs drift from the reference", fontsize=10)
    axes[1].set_title("reward vs diversity", fontsize=10)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


class TradeoffPlot(L.Callback):
    """Draws the run's `sample_history` (a `PolicyModule`'s evaluations) with `tradeoff_figure` after testing."""

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = pd.DataFrame(getattr(pl_module, "sample_history", []))
        if not trainer.is_global_zero or history.empty or "reward" not in history:
            return
        used = pl_module.objective.used_divergence()
        label = used.name if used is not None else type(pl_module.objective).__name__
        curve = history[history["split"] == "val"].drop_duplicates("step", keep="last")[list(COLUMNS)]
        if curve.empty:  # no validation ran (e.g. trainer.max_steps=0): no trajectory to draw
            return
        tests = history[history["split"] == "test"]
        finals = {label: tests.iloc[-1]} if not tests.empty else None
        path = Path(trainer.default_root_dir) / FIGURE
        title = f"{type(pl_module.objective).__name__} ({label})" if used is not None else label
        tradeoff_figure({label: curve}, finals, title=title).savefig(path, dpi=160)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="tradeoff", images=[str(path)])


def multirun_tradeoff(sweep_dir: str | Path) -> Path | None:
    """Draw every completed run under `sweep_dir` into `<sweep_dir>/reward_kl.png`, one line per
    divergence (mean over seeds at each step); None when no run logged the sample metrics."""
    sweep_dir = Path(sweep_dir)
    runs: dict[str, list[pd.DataFrame]] = {}
    finals: dict[str, list[pd.Series]] = {}
    methods: set[str] = set()
    for record, curve in completed_curves(sweep_dir, COLUMNS[1:]):
        label = _label(record)
        methods.add(str(record.get("method")))
        runs.setdefault(label, []).append(curve)
        final = {name: record["metrics"].get(f"test/{name}") for name in COLUMNS[1:]}
        if None not in final.values():
            finals.setdefault(label, []).append(pd.Series(final))
    if not runs:
        return None
    order = lambda label: (list(COLOURS).index(label.split(" ")[0]) if label.split(" ")[0] in COLOURS else len(COLOURS), label)  # noqa: E731
    curves = {label: pd.concat(frames).groupby("step", as_index=False).mean() for label, frames in sorted(runs.items(), key=lambda item: order(item[0]))}
    means = {label: pd.concat(points, axis=1).mean(axis=1) for label, points in finals.items()}
    seeds = max(len(frames) for frames in runs.values())
    title = f"{', '.join(sorted(methods))} by divergence ({seeds} seed{'s' if seeds > 1 else ''} each)"
    path = sweep_dir / FIGURE
    tradeoff_figure(curves, means, title).savefig(path, dpi=160)
    return path


def _label(record: dict) -> str:
    """The run's divergence as results.json records it (with α for the alpha-divergence)."""
    divergence = record.get("divergence") or "?"
    alpha = (record.get("divergence_params") or {}).get("alpha")
    return f"{divergence} (α={alpha})" if divergence == "alpha" and alpha is not None else str(divergence)


class MultirunTradeoff(HydraCallback):
    """Hydra callback: `multirun_tradeoff(<sweep dir>)` once every job of a multirun has finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = multirun_tradeoff(config.hydra.sweep.dir)
        if path is not None:
            log.info("reward-KL-diversity trade-off of the multirun: %s", path)
