"""Checks that run before training, so that a mismatched setup fails in seconds, not hours."""

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from kdlab.errors import ConfigError

if TYPE_CHECKING:  # validation imports this module before Lightning is needed
    import lightning as L


def check_label_spaces(
    datamodule: "L.LightningDataModule", num_classes: int, student: nn.Module, teacher: nn.Module | None = None
) -> None:
    """Raise ConfigError unless student, teacher and dataset agree on the number of classes, and the
    models take the data's image size (`check_input_size`).

    The models are asked, not trusted: one forward pass on two training inputs shows how many
    logits each produces.
    """
    own = getattr(datamodule, "num_classes", None)
    if isinstance(own, int) and own != num_classes:
        raise ConfigError(f"dataset.num_classes={num_classes}, but the dataset has {own} classes: set dataset.num_classes={own}")
    datamodule.setup("fit")
    inputs = first_rows(next(iter(datamodule.train_dataloader()))["input"], 2)
    check_input_size(inputs, {"student": student} | ({"teacher": teacher} if teacher is not None else {}))
    widths = {"student": _logit_width(student, inputs)}
    if teacher is not None:
        widths["teacher"] = _logit_width(teacher, inputs)
    wrong = {name: width for name, width in widths.items() if width != num_classes}
    if wrong:
        found = ", ".join(f"the {name} predicts {width}" for name, width in wrong.items())
        raise ConfigError(
            f"label spaces differ: the dataset has {num_classes} classes (dataset.num_classes) but {found}. "
            "Pick a model pair built for this dataset (model.teacher/student num_classes)."
        )


def check_input_size(inputs: torch.Tensor | Mapping[str, torch.Tensor], models: Mapping[str, nn.Module]) -> None:
    """Raise ConfigError when images `[B, C, H, W]` are not of the size a model declares it is built for
    (`input_size`, e.g. the CIFAR zoo's 32x32): it would train, on a few pixels per feature map."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        return
    size = tuple(inputs.shape[-2:])
    for role, model in models.items():
        built_for = getattr(model, "input_size", None)
        if built_for is not None and tuple(built_for) != size:
            raise ConfigError(
                f"the {role} ({type(model).__name__}) is built for {built_for[0]}x{built_for[1]} images, but the dataset gives "
                f"{size[0]}x{size[1]}: pick a model pair for this dataset (model=..., kdlab list models) or a dataset of that size"
            )


def first_rows(inputs: torch.Tensor | Mapping[str, torch.Tensor], n: int) -> torch.Tensor | dict[str, torch.Tensor]:
    """The first n rows of a batch's inputs: a tensor, or a dict of tensors (tokenised text)."""
    if isinstance(inputs, Mapping):
        return {key: value[:n] for key, value in inputs.items()}
    return inputs[:n]


def _logit_width(model: nn.Module, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> int:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        width = model(inputs).shape[-1]
    model.train(was_training)
    return width


def check_features(objective: str, student: nn.Module, teacher: nn.Module | None = None) -> None:
    """Raise ConfigError unless every model can return features (`forward(x, return_features=True)`),
    which objectives that declare `needs_features` (ND, USKD, DHKD) read."""
    models = {"student": student} | ({"teacher": teacher} if teacher is not None else {})
    lacking = [
        f"the {role} ({type(model).__name__})"
        for role, model in models.items()
        if "return_features" not in inspect.signature(model.forward).parameters
    ]
    if lacking:
        raise ConfigError(
            f"{objective} needs intermediate features, but {' and '.join(lacking)} cannot return them: "
            "its forward has no `return_features` argument. Use a kdlab vision model (kdlab list models)."
        )
