"""Checks that run before training, so that a mismatched setup fails in seconds, not hours."""

import lightning as L
import torch
from torch import nn


def check_label_spaces(
    datamodule: L.LightningDataModule, num_classes: int, student: nn.Module, teacher: nn.Module | None = None
) -> None:
    """Raise ValueError unless student, teacher and dataset agree on the number of classes.

    The models are asked, not trusted: one forward pass on two training inputs shows how many
    logits each produces.
    """
    datamodule.setup("fit")
    inputs = next(iter(datamodule.train_dataloader()))["input"][:2]
    widths = {"student": _logit_width(student, inputs)}
    if teacher is not None:
        widths["teacher"] = _logit_width(teacher, inputs)
    wrong = {name: width for name, width in widths.items() if width != num_classes}
    if wrong:
        found = ", ".join(f"the {name} predicts {width}" for name, width in wrong.items())
        raise ValueError(
            f"label spaces differ: the dataset has {num_classes} classes (dataset.num_classes) but {found}. "
            "Pick a model pair built for this dataset (model.teacher/student num_classes)."
        )


def _logit_width(model: nn.Module, inputs: torch.Tensor) -> int:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        width = model(inputs).shape[-1]
    model.train(was_training)
    return width
