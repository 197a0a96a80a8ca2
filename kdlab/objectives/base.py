"""What every method objective is: a loss `objective(outputs, batch) -> (loss, logs)` that says in code
which divergence it uses, and what it may be given when fitting starts.

The divergence slot (`Objective.divergence_slot`, a class attribute) is one of
- `NoDivergence()` (the default): the method's terms are fixed by the method (NKD, USKD, SFT, ...);
  runs record `divergence: null`, the preset sets `override /divergence: none`;
- `FixedDivergence(name, meaning)`: the method is defined by one divergence (DPO: `rkl`, the
  KL(π‖π_ref) it is derived from); the preset selects that divergence, which is recorded;
- `OpenSlot(names)`: the user picks the divergence (`divergence=js`); `names` restricts the choice
  (f-DPO: rkl, fkl, js, alpha), empty means every registered divergence. Only these objectives
  receive a built `kdlab.divergences.Divergence`, as their first constructor argument `divergence`.

`kdlab.run` checks the asked divergence against the slot before any data or model is built, and
records `used_divergence()` of the built objective, so what a run says it used is what it computed.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdlab.divergences import REGISTRY, Divergence, get, parameters
from kdlab.errors import ConfigError


class DivergenceSlot:
    """Which divergence an objective takes (see the module docstring for the three kinds)."""

    receives_divergence: ClassVar[bool] = False  # the constructor takes a built `Divergence`

    def accepts(self, name: str | None, params: Mapping[str, Any]) -> bool:
        """Whether `divergence=<name>` with `params` (null name: `divergence=none`) fits this slot."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the slot takes, for messages and `kdlab list methods`."""
        raise NotImplementedError

    def used(self, objective: "Objective") -> Divergence | None:
        """The divergence the built `objective` computes with (None: none)."""
        raise NotImplementedError


@dataclass(frozen=True)
class NoDivergence(DivergenceSlot):
    """No divergence slot: only `divergence=none` fits."""

    def accepts(self, name: str | None, params: Mapping[str, Any]) -> bool:
        return name is None

    def describe(self) -> str:
        return "none"

    def used(self, objective: "Objective") -> None:
        return None


@dataclass(frozen=True)
class FixedDivergence(DivergenceSlot):
    """A divergence fixed by construction: only `divergence=<name>` with its default parameters fits.

    `meaning` says what it is in the method (e.g. "KL(π‖π_ref), the regulariser DPO is derived from").
    """

    name: str
    meaning: str

    def accepts(self, name: str | None, params: Mapping[str, Any]) -> bool:
        return name == self.name and dict(params) == parameters(self.name)

    def describe(self) -> str:
        return f"{self.name} (fixed: {self.meaning})"

    def used(self, objective: "Objective") -> Divergence:
        return get(self.name)


@dataclass(frozen=True)
class OpenSlot(DivergenceSlot):
    """The user's choice of divergence: any of `names`, or every registered one when `names` is empty."""

    names: tuple[str, ...] = ()
    receives_divergence: ClassVar[bool] = True

    def accepts(self, name: str | None, params: Mapping[str, Any]) -> bool:
        return name is not None and (name in self.names if self.names else name in REGISTRY)

    def describe(self) -> str:
        return "|".join(self.names) if self.names else "any"

    def used(self, objective: "Objective") -> Divergence:
        return objective.divergence

    def bind(self, owner: str, divergence: Divergence) -> Divergence:
        """`divergence` after checking that it fits (`owner`: the objective's name, for the message)."""
        if not isinstance(divergence, Divergence) or not self.accepts(divergence.name, divergence.params):
            raise ConfigError(f"{owner} takes the divergences {self.describe()}, got {divergence!r}")
        return divergence


@dataclass(frozen=True)
class PrepareContext:
    """What `Objective.prepare` may use when fitting starts; the module builds it, nothing else is passed.

    `model`: the trained model; `teacher`: the teacher (frozen or online) or None; `num_classes`: the
    label space (None for text); `device`: where training runs; `train_loader()`: a fresh loader over
    the training data; `trainable_parameters()`: every parameter the optimiser will train (call it
    after building the objective's own layers: they are included).
    """

    model: nn.Module
    teacher: nn.Module | None
    num_classes: int | None
    device: torch.device
    train_loader: Callable[[], DataLoader]
    trainable_parameters: Callable[[], list[nn.Parameter]]

    def example_features(self, model: nn.Module) -> dict[str, Any]:
        """`model`'s feature dict on two training inputs (eval mode, no grad), for sizing layers. The
        draw leaves the random state that training then uses untouched."""
        with torch.random.fork_rng(devices=[]):
            inputs = next(iter(self.train_loader()))["input"][:2]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            _, features = model(inputs.to(next(model.parameters()).device), return_features=True)
        model.train(was_training)
        return features


class Objective(nn.Module):
    """Base of every method's loss: `forward(outputs, batch) -> (loss, logs)`.

    `outputs` are what the regime's module computed (`logits`, `teacher_logits`, ... and in
    training `progress`, a `kdlab.objectives.progress.Progress`); `logs` maps term names to detached
    scalars, logged as `train/<name>`. Class attributes: `divergence_slot` (see the module
    docstring), `needs_features` (the models are called with `return_features=True` and outputs
    gain `features`, `teacher_features`) and `reads_training_set` (`prepare` runs the teacher over the
    training loader's dataset, which cached teacher outputs do not replay). Layers and statistics that depend on the models or the
    data are made in `prepare(context)`; the objective's parameters are trained with the model's.
    Constructors take every hyperparameter as a required keyword argument: the method's preset
    (`conf/method/<name>.yaml`) holds the defaults, once.
    """

    divergence_slot: ClassVar[DivergenceSlot] = NoDivergence()
    needs_features: ClassVar[bool] = False
    reads_training_set: ClassVar[bool] = False

    def prepare(self, context: PrepareContext) -> None:
        """Called once when fitting starts, before the optimiser is built and a checkpoint restored."""

    def forward(self, outputs: dict[str, Any], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def used_divergence(self) -> Divergence | None:
        """The divergence this objective computes with, as runs record it (None: no divergence slot)."""
        return self.divergence_slot.used(self)
