"""What a run killed at any point needs, beyond Lightning's own checkpoint, to end exactly as the
uninterrupted run: randomness that depends on where the run is, not on what the process did before,
and the records of the epochs before the checkpoint.

A resumed run restarts from `last.ckpt`, written at the end of an epoch (weights, optimiser and
LR-scheduler state, loop counters, `ModelCheckpoint`'s best-model tracking: Lightning's), and redoes
the epoch that was cut short. For that epoch to repeat exactly, every random draw in it must be a
function of the run's seed and the position in training, which `ResumableRun` makes it:

- the sample order (`kdlab.data.order.EpochOrder`: seed and epoch) and the augmentation of each
  sample (seed, epoch and index) are the datamodules';
- the global generators (torch on the CPU and every GPU, numpy, Python's `random`: dropout, sampled
  responses, online data) are seeded here with `derived_seed(seed, "train", epoch, rank)` when each
  training epoch starts, `derived_seed(seed, "train", epoch, batch, rank)` before each training batch,
  `derived_seed(seed, "val", global step, rank)` before each validation and `derived_seed(seed, "test",
  rank)` before testing.

Its checkpoint entry (`checkpoint["kdlab"]`) holds the number of rows of each CSV log written before
the checkpoint (the log is flushed first) and the fit's metrics (`trainer.callback_metrics`): a run
resumed in the same directory puts those rows back into the CSV log (Lightning's `CSVLogger` deletes
the file it finds), so that `csv/metrics.csv` ends as the uninterrupted run's does; a run resumed
from a checkpoint of its last epoch (killed while testing) has no epoch left to fit and reports the
fit metrics of the checkpoint.
"""

import csv
import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger

from kdlab.fingerprint import derived_seed

log = logging.getLogger(__name__)

STATE_KEY = "kdlab"


class ResumableRun(Callback):
    """Seeds every epoch, training batch, validation and test from `seed` and the position in
    training, and carries the CSV logs and fit metrics across a resume (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.earlier_rows: dict[str, list[dict[str, str]]] = {}
        self.restored_metrics: dict[str, float] = {}
        self.trained = False

    # ---- randomness -----------------------------------------------------------------------------
    def reseed(self, trainer: L.Trainer, *position: int | str) -> None:
        seed = derived_seed(self.seed, *position, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        seed_torch(seed, trainer.strategy.root_device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trained = True
        self.reseed(trainer, "train", trainer.current_epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.reseed(trainer, "train", trainer.current_epoch, batch_idx)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reseed(trainer, "val", trainer.global_step)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reseed(trainer, "test")

    # ---- what a resumed run needs of the earlier one --------------------------------------------
    def keep_earlier_logs(self, loggers: list[Logger]) -> None:
        """Read the CSV logs the run finds in its directory, before its loggers delete them; the rows
        before the checkpoint fitting starts from (if any) are logged again."""
        for logger in loggers:
            if isinstance(logger, CSVLogger) and (path := _metrics_file(logger)).is_file():
                with open(path, newline="") as file:
                    self.earlier_rows[str(path)] = list(csv.DictReader(file))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        rows = {}
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # every row logged so far is in the file before the checkpoint is
                if trainer.is_global_zero and (path := _metrics_file(logger)).is_file():
                    with open(path, newline="") as file:
                        rows[str(path)] = sum(1 for _ in csv.reader(file)) - 1
        checkpoint[STATE_KEY] = {"csv_rows": rows, "fit_metrics": _floats(trainer.callback_metrics)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY, {})
        self.restored_metrics = state.get("fit_metrics", {})
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                continue
            path = str(_metrics_file(logger))
            count, earlier = state.get("csv_rows", {}).get(path), self.earlier_rows.get(path, [])
            if count is None:
                continue
            if len(earlier) < count:
                log.warning("%s holds %d of the %d rows logged before the checkpoint: the earlier epochs' rows are incomplete",
                            path, len(earlier), count)
            for row in earlier[:count]:
                logger.experiment.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def fit_metrics(self, trainer: L.Trainer) -> dict[str, float]:
        """The metrics at the end of fitting: the trainer's, or the checkpoint's when this process resumed
        after the last epoch and fitted nothing."""
        return _floats(trainer.callback_metrics) if self.trained else dict(self.restored_metrics)


def seed_torch(seed: int, device: torch.device) -> None:
    """`torch.manual_seed(seed)` for a run on `device`: the CPU generator, and the accelerators' when the
    run uses one. `torch.manual_seed` also queues a lazy seed for every accelerator type torch knows
    (formatting a stack trace for each, ~2 ms: a small model's whole training step on the CPU), which
    a CPU run never draws from."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def _metrics_file(logger: CSVLogger) -> Path:
    return Path(logger.log_dir) / "metrics.csv"


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}
