"""What every kdlab LightningModule shares: optimiser set-up, the finite-loss guard, metric logging."""

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn

from omegaconf import DictConfig

from kdlab.checks import check_label_spaces
from kdlab.metrics import ClassificationPanel

Objective = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or inf; the message names the step and the offending terms."""


class ClassifierModule(L.LightningModule):
    """Base of the classification regimes.

    Subclasses implement `model_outputs(batch) -> {"logits": [B, C], ...}`. The objective turns
    outputs into `(loss, logs)`; its own parameters (auxiliary heads, projectors) are trained with
    the model's. `optimizer` and `scheduler` are partials (Hydra `_partial_: true`) that take the
    parameters / the optimizer. Logged: `train/loss`, `train/<term>` per objective term,
    `<split>/<metric>` per evaluation metric.

    `teacher_role` tells `kdlab.run` what the regime needs: None (no teacher), "frozen" (a trained
    teacher from the cache, never updated) or "online" (a fresh teacher trained alongside).
    """

    teacher_role: ClassVar[str | None] = None

    def __init__(
        self,
        objective: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.metrics = nn.ModuleDict({split: ClassificationPanel(num_classes) for split in ("val", "test")})

    def model_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The trained model's parameters and the objective's (e.g. an auxiliary head)."""
        yield from self.model.parameters()
        yield from self.objective.parameters()

    @classmethod
    def check_models(
        cls, datamodule: L.LightningDataModule, dataset: DictConfig, student: nn.Module, teacher: nn.Module | None
    ) -> None:
        """Fail before any training when the models do not fit the data or each other."""
        check_label_spaces(datamodule, dataset.num_classes, student, teacher)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logs = self.objective(self.model_outputs(batch), batch)
        self.check_finite(loss, logs)
        batch_size = len(batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{name}": value for name, value in logs.items()}, batch_size=batch_size)
        return loss

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

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._update_metrics("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._update_metrics("test", batch)

    def _update_metrics(self, split: str, batch: dict[str, torch.Tensor]) -> None:
        outputs = self.model_outputs(batch)
        self.metrics[split].update(outputs["logits"], batch["label"], outputs.get("teacher_logits"))

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        values = self.metrics[split].compute()
        self.log_dict({f"{split}/{name}": value for name, value in values.items()}, prog_bar=split == "val")
        self.metrics[split].reset()
