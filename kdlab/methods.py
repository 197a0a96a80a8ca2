"""The methods as their presets define them, and the check that a run's divergence fits its method.

A method is its preset file, `conf/method/<name>.yaml`: its objective (`objective._target_`) and
its regime (`module._target_`, from the `conf/regime/` file it composes) are read by composing
that file, never from a list kept in code. `check_divergence` runs before any data, model or
teacher is built; when the asked divergence does not fit the objective's `divergence_slot`, its
one-line `ConfigError` names what the method takes and the methods that take the asked divergence
(those of the same regime first), found by composing every preset.
"""

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import DictConfig

from kdlab.conf import CONF_DIR, label
from kdlab.divergences import parameters
from kdlab.errors import ConfigError
from kdlab.objectives.base import DivergenceSlot, FixedDivergence, NoDivergence, Objective


@dataclass(frozen=True)
class Method:
    """One method preset: its name, the objective class and the regime (module class) it composes."""

    name: str
    objective: type[Objective]
    regime: type

    @property
    def slot(self) -> DivergenceSlot:
        return self.objective.divergence_slot


def method_names() -> list[str]:
    """Every method preset, `conf/method/<name>.yaml`."""
    return sorted(path.stem for path in (CONF_DIR / "method").glob("*.yaml"))


@contextmanager
def _composing() -> Iterator[None]:
    """Hydra's compose API over kdlab's configs: the running application's, or a fresh one."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_module("kdlab.conf", version_base="1.3"):
        yield


@functools.cache
def catalogue() -> tuple[Method, ...]:
    """Every method, read by composing its preset (a few seconds: used on error paths and by `kdlab list`)."""
    with _composing():
        configs = {name: compose("train", overrides=[f"method={name}"]) for name in method_names()}
    return tuple(Method(name, get_class(cfg.objective._target_), get_class(cfg.module._target_)) for name, cfg in configs.items())


def asked_divergence(divergence: DictConfig | Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """`(name, parameters)` of the composed `divergence` node (`name` None for `divergence=none`)."""
    params = {key: value for key, value in divergence.items() if key != "name"}
    return divergence["name"], params


def check_divergence(method: str, objective: type[Objective], regime: type, divergence: DictConfig | Mapping[str, Any]) -> None:
    """ConfigError unless the objective's divergence slot accepts the composed `divergence` node."""
    name, params = asked_divergence(divergence)
    slot = objective.divergence_slot
    if not slot.accepts(name, params):
        raise ConfigError(rejection(method, slot, regime, name, params))


def rejection(method: str, slot: DivergenceSlot, regime: type, name: str | None, params: dict[str, Any]) -> str:
    """The message for `divergence=<name>` (with `params`) asked of `method`, whose slot refuses it."""
    if isinstance(slot, FixedDivergence) and name == slot.name:
        changed = ", ".join(f"divergence.{key}={value}" for key, value in params.items() if parameters(name).get(key) != value)
        return f"+method={method} fixes its divergence to {slot.name} ({slot.meaning}) with its default parameters: drop {changed}"
    if isinstance(slot, NoDivergence):
        takes = "takes no divergence (divergence=none)"
    elif isinstance(slot, FixedDivergence):
        takes = f"fixes its divergence to {slot.name} ({slot.meaning})"
    else:
        takes = f"takes divergence={slot.describe()}" + (" (kdlab list divergences)" if slot.describe() == "any" else "")
    others = [m for m in catalogue() if m.name != method and m.slot.accepts(name, params)]
    same_regime = [m.name for m in others if m.regime is regime]
    if same_regime:
        hint = f"for divergence={label(name)} use +method={'|'.join(same_regime)}"
    elif others:
        hint = f"no method of its regime takes divergence={label(name)}; methods of other regimes that do: +method={'|'.join(m.name for m in others)}"
    else:
        hint = f"no method takes divergence={label(name)}"
    return f"+method={method} {takes}, but divergence={label(name)} was asked; {hint}"
