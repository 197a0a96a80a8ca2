"""What every kdlab LightningModule shares: optimiser set-up, the finite-loss guard, metric logging."""

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn

from omegaconf import DictConfig

from kdlab.checks import check_features, check_label_spaces
from kdlab.metrics import ClassificationPanel
from kdlab.objectives.progress import Progress

Objective = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or inf; the message names the step and the offending terms."""


class TrainingModule(L.LightningModule):
    """What every kdlab regime shares: the optimiser (and scheduler) built from Hydra partials over
    `trainable_parameters()`, and the finite-loss guard. `teacher_role` tells `kdlab.run` what the
    regime needs: None (no teacher), "frozen" (a trained teacher from the cache, never updated),
    "online" (a fresh teacher trained alongside) or "pretrained" (the teacher model as built from
    its config — a pretrained LM — frozen, never trained by the cache)."""

    teacher_role: ClassVar[str | None] = None

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The trained model's parameters and the objective's (e.g. an auxiliary head)."""
        yield from self.model.parameters()
        yield from self.objective.parameters()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def check_finite(self, loss: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
        """Stop the run when the loss is NaN/inf, saying at which step and which term caused it."""
        if torch.isfinite(loss).all():
            return
        bad_terms = {name: value.item() for name, value in logs.items() if not torch.isfinite(value).all()}
        cause = ", ".join(f"{name}={value}" for name, value in bad_terms.items()) or "no single term"
        raise NonFiniteLossError(
            f"non-finite training loss {loss.item()} at global step {self.global_step} "
            f"(epoch {self.current_epoch}); non-finite terms: {cause}"
        )


class ClassifierModule(TrainingModule):
    """Base of the classification regimes.

    Subclasses implement `model_outputs(batch) -> {"logits": [B, C], ...}`. The objective turns
    outputs into `(loss, logs)`; its own parameters (auxiliary heads, projectors) are trained with
    the model's.

    What an objective may ask for beyond logits (the whole mechanism; nothing else is passed):
    - `needs_features: ClassVar[bool]` on the objective: every model is called with
      `return_features=True`, and outputs gain `"features"` (and `"teacher_features"`), the dict
      `{"penultimate": [B, d], "stages": [...]}` of kdlab vision models;
    - `outputs["progress"]`: a `Progress(epoch, max_epochs)` in every training step (warm-ups, schedules);
    - `objective.prepare(module)`, if defined: called once when fitting starts, before the optimiser
      is built and before a checkpoint is restored, to size layers and buffers from the models and
      the data (`module.model`, `module.teacher`, `module.num_classes`, `module.trainer.datamodule`,
      `module.example_features(model)`) and to compute statistics (e.g. ND's teacher class means).

    `optimizer` and `scheduler` are partials (Hydra `_partial_: true`) that take the
    parameters / the optimizer. Logged: `train/loss`, `train/<term>` per objective term,
    `<split>/<metric>` per evaluation metric; a datamodule with `task_metrics()` (GLUE: F1, Matthews
    correlation) adds its metrics of the predicted classes, logged the same way.
    """

    def __init__(
        self,
        objective: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.objective = objective
        self.num_classes = num_classes
        self.objective_prepared = False
        self.metrics = nn.ModuleDict({split: ClassificationPanel(num_classes) for split in ("val", "test")})
        self.task_metrics = nn.ModuleDict()

    def model_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        raise NotImplementedError

    def run_model(self, model: nn.Module, inputs: torch.Tensor, prefix: str = "") -> dict[str, Any]:
        """`{prefix + "logits": [B, C]}`, plus `prefix + "features"` when the objective needs features."""
        if not getattr(self.objective, "needs_features", False):
            return {f"{prefix}logits": model(inputs)}
        logits, features = model(inputs, return_features=True)
        return {f"{prefix}logits": logits, f"{prefix}features": features}

    def setup(self, stage: str) -> None:
        task_metrics = getattr(self.trainer.datamodule, "task_metrics", None)
        if task_metrics is not None and not self.task_metrics:
            self.task_metrics = nn.ModuleDict({split: nn.ModuleDict(task_metrics()) for split in ("val", "test")})
        if stage == "fit" and hasattr(self.objective, "prepare") and not self.objective_prepared:
            self.objective.prepare(self)
            self.objective_prepared = True  # a second `fit` of this module keeps what was learned

    def example_features(self, model: nn.Module) -> dict[str, Any]:
        """`model`'s feature dict on two training inputs (eval mode, no grad), for sizing layers in
        `prepare`. The draw does not disturb the random state that training then uses."""
        datamodule = self.trainer.datamodule
        with torch.random.fork_rng(devices=[]):
            inputs = next(iter(datamodule.train_dataloader()))["input"][:2]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            _, features = model(inputs.to(next(model.parameters()).device), return_features=True)
        model.train(was_training)
        return features

    @classmethod
    def check_models(
        cls,
        datamodule: L.LightningDataModule,
        dataset: DictConfig,
        student: nn.Module,
        teacher: nn.Module | None,
        objective: nn.Module | None = None,
    ) -> None:
        """Fail before any training when the models do not fit the data, each other or the objective."""
        check_label_spaces(datamodule, dataset.num_classes, student, teacher)
        if getattr(objective, "needs_features", False):
            check_features(type(objective).__name__, student, teacher)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        outputs = self.model_outputs(batch) | {"progress": Progress(self.current_epoch, self.trainer.max_epochs)}
        loss, logs = self.objective(outputs, batch)
        self.check_finite(loss, logs)
        batch_size = len(batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{name}": value for name, value in logs.items()}, batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._update_metrics("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._update_metrics("test", batch)

    def _update_metrics(self, split: str, batch: dict[str, torch.Tensor]) -> None:
        outputs = self.model_outputs(batch)
        self.metrics[split].update(outputs["logits"], batch["label"], outputs.get("teacher_logits"))
        for metric in self.task_metrics[split].values() if self.task_metrics else ():
            metric.update(outputs["logits"].argmax(dim=-1), batch["label"])

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        values = self.metrics[split].compute()
        if self.task_metrics:
            values |= {name: metric.compute() for name, metric in self.task_metrics[split].items()}
            for metric in self.task_metrics[split].values():
                metric.reset()
        self.log_dict({f"{split}/{name}": value for name, value in values.items()}, prog_bar=split == "val")
        self.metrics[split].reset()
