"""The skeleton every kdlab regime shares: steps, epochs, the NaN guard, logging, frozen models,
checkpoints, the objective's preparation and the export of Hugging Face models.

A regime (`DistillModule`, `TeacherModule`, `OnlineDistillModule`, `LMDistillModule`,
`PolicyModule`) writes only what differs: its forward passes (`model_outputs`), its evaluation
metrics (`evaluate`, `epoch_metrics`) and the checks of its models (`check_models`).
"""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn

from kdlab.errors import KdlabError
from kdlab.metrics.running import RunningMeans
from kdlab.objectives.base import Objective, PrepareContext
from kdlab.objectives.progress import Progress

Batch = dict[str, Any]
TRAIN_WINDOW_KEY = "kdlab_train_window"  # the checkpoint's entry of the running training means


class NonFiniteLossError(KdlabError, RuntimeError):
    """A training loss became NaN or inf; the message names the step, the offending terms and what to change."""


class TrainingModule(L.LightningModule):
    """Trains `model` with `objective(outputs, batch) -> (loss, logs)`.

    `optimizer` and `scheduler` are partials (Hydra `_partial_: true`) that take the parameters /
    the optimizer; the optimiser trains `trainable_parameters()` (the model's and the objective's
    own, e.g. an auxiliary head). `objective.prepare(context)` runs once when fitting starts, before
    the optimiser is built and a checkpoint restored, with a `PrepareContext` (models, number of
    classes, device, training loader): objectives never reach into the Trainer.

    Steps: `training_step` calls `training_batch(batch)` (a regime may replace the batch, e.g. by
    sampled responses, and log what it did), then `model_outputs(batch, "train")`, adds
    `outputs["progress"]` (a `Progress(epoch, max_epochs)` for warm-ups and schedules), takes the
    loss, stops the run on a non-finite loss (`NonFiniteLossError` naming the step and the term),
    and adds `loss` and the objective's terms to running means kept on the device (`RunningMeans`,
    weighted by `batch_size(batch)`). Only on the steps whose logs reach the loggers (every
    `trainer.log_every_n_steps`) are they logged, as `train/loss` and `train/<term>`: each row the
    mean over the steps since the previous row (across epochs; the window is in the checkpoint, so a
    resumed run writes the same rows). The last batch of an epoch (and the step `trainer.max_steps`
    ends on) logs the window so far without a row: `trainer.callback_metrics`, hence results.json,
    hold the mean of the last steps of the fit.
    One `self.log` per row, not per step: Lightning's logging costs more than a small model's step.
    Validation and test batches go to
    `evaluate(batch, split)`; at the end of their epoch `epoch_metrics(split)` is logged as
    `<split>/<name>`.

    Frozen sub-models (`freeze(name, model)`: a distillation teacher, a policy's reference) have no
    gradient, stay in eval mode when the module trains, are never optimised and are left out of
    checkpoints (the run rebuilds them; loading is not strict). `teacher_role` tells `kdlab.run` what
    the regime needs: None (no teacher), "frozen" (a trained teacher from the cache), "online" (a
    fresh teacher trained alongside) or "pretrained" (the teacher model as built from its config).
    After fitting, a model with `save_pretrained` (Hugging Face) is saved with the datamodule's
    tokenizer in `<run dir>/<export_dir>` when the regime sets `export_dir`.

    `batches` names the kind of batches the regime trains on, as every datamodule class names the kind
    it gives: "labelled" (`{"input", "label", "index"}`: images, sentences with a class), "text"
    (prompts and responses, `kdlab.data.text`) or "preferences" (pairs, `kdlab.data.preference`);
    `kdlab.validate` refuses a dataset of another kind than the method's regime before anything is built.
    """

    teacher_role: ClassVar[str | None] = None
    batches: ClassVar[str | None] = None
    export_dir: ClassVar[str | None] = None

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int | None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.num_classes = num_classes
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.frozen: list[str] = []
        self.objective_prepared = False
        self.train_window = RunningMeans()

    # ---- models ---------------------------------------------------------------------------------
    def freeze(self, name: str, model: nn.Module) -> None:
        """Hold `model` as the frozen sub-model `self.<name>` (see the class docstring)."""
        setattr(self, name, model.requires_grad_(False).eval())
        self.frozen.append(name)
        self.strict_loading = False

    def train(self, mode: bool = True) -> "TrainingModule":
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The trained model's parameters and the objective's."""
        yield from self.model.parameters()
        yield from self.objective.parameters()

    def on_fit_start(self) -> None:
        self.model.train()  # `from_pretrained` returns models in eval mode

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.frozen:
            prefixes = tuple(f"{name}." for name in self.frozen)
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}
        checkpoint[TRAIN_WINDOW_KEY] = self.train_window.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if TRAIN_WINDOW_KEY in checkpoint:  # the steps since the last train/* row: the resumed run's next row is the same
            self.train_window.load_state_dict(checkpoint[TRAIN_WINDOW_KEY])

    def on_fit_end(self) -> None:
        if self.export_dir is None or not self.trainer.is_global_zero or not hasattr(self.model, "save_pretrained"):
            return
        directory = Path(self.trainer.default_root_dir) / self.export_dir
        self.model.save_pretrained(directory)
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    # ---- set-up ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def setup(self, stage: str) -> None:
        if stage == "fit" and not self.objective_prepared:
            self.objective.prepare(self.prepare_context())
            self.objective_prepared = True  # a second `fit` of this module keeps what was learned

    def prepare_context(self) -> PrepareContext:
        return PrepareContext(
            model=self.model,
            teacher=getattr(self, "teacher", None),
            num_classes=self.num_classes,
            device=self.trainer.strategy.root_device,
            train_loader=self.trainer.datamodule.train_dataloader,
            trainable_parameters=lambda: list(self.trainable_parameters()),
        )

    # ---- what a regime writes ------------------------------------------------------------------
    @classmethod
    def check_models(
        cls, datamodule: L.LightningDataModule, num_classes: int | None, student: nn.Module, teacher: nn.Module | None, objective: Objective
    ) -> None:
        """Fail before any training when the models do not fit the data, each other or the objective."""

    def model_outputs(self, batch: Batch, split: str) -> dict[str, Any]:
        """The objective's `outputs` for one batch of `split` ("train", "val" or "test")."""
        raise NotImplementedError

    def batch_size(self, batch: Batch) -> int:
        """How many samples the batch holds (the weight of its logged values)."""
        raise NotImplementedError

    def training_batch(self, batch: Batch) -> tuple[Batch, dict[str, float]]:
        """The batch the training loss is taken on, and values to log about it (default: the batch as given)."""
        return batch, {}

    def evaluate(self, batch: Batch, split: str) -> None:
        """Update the epoch metrics of `split` with one batch."""
        raise NotImplementedError

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor | float]:
        """The metrics of the finished epoch of `split` (and reset them for the next one)."""
        raise NotImplementedError

    # ---- the loop -------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        batch, batch_logs = self.training_batch(batch)
        outputs = self.model_outputs(batch, "train") | {"progress": Progress(self.current_epoch, self.trainer.max_epochs)}
        loss, logs = self.objective(outputs, batch)
        self.check_finite(loss, logs)
        self.train_window.add({"loss": loss} | logs | batch_logs, self.batch_size(batch))
        if self.logs_reach_loggers():
            self.log_train_means(self.train_window.pop())
        elif self.trainer.is_last_batch or 0 <= self.trainer.max_steps <= self.trainer.global_step + 1:
            self.log_train_means(self.train_window.means())  # an epoch's (or the fit's) last figures, not written as a row
        return loss

    def log_train_means(self, means: dict[str, torch.Tensor | float]) -> None:
        self.log("train/loss", means.pop("loss"), prog_bar=True)
        self.log_dict({f"train/{name}": value for name, value in means.items()})

    def logs_reach_loggers(self) -> bool:
        """Whether Lightning writes this training step's logged values to the loggers: every
        `trainer.log_every_n_steps` optimiser steps, on the last batch a step accumulates (its own test)."""
        trainer = self.trainer
        if trainer.fit_loop._should_accumulate() and self.automatic_optimization:
            return False
        return trainer._logger_connector.should_update_logs or bool(trainer.fast_dev_run)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def log_epoch(self, split: str) -> None:
        values = self.epoch_metrics(split)
        if values:
            self.log_dict({f"{split}/{name}": value for name, value in values.items()}, prog_bar=split == "val", sync_dist=True)

    def check_finite(self, loss: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
        """Stop the run when the loss is NaN/inf, saying at which step and which term caused it."""
        if torch.isfinite(loss).all():
            return
        bad_terms = {name: value.item() for name, value in logs.items() if not torch.isfinite(value).all()}
        cause = ", ".join(f"{name}={value}" for name, value in bad_terms.items()) or "no single term"
        raise NonFiniteLossError(
            f"non-finite training loss {loss.item()} at global step {self.global_step} "
            f"(epoch {self.current_epoch}); non-finite terms: {cause}. Lower optimizer.lr, or clip the gradients "
            "(trainer.gradient_clip_val=1.0)"
        )
