"""The methods as their presets define them, and the check that a run's divergence fits its method.

A method is its preset file, `conf/method/<name>.yaml`: its objective (`objective._target_`) and
its regime (`module._target_`, from the `conf/regime/` file it composes) are read from that file
and the presets its defaults list names, never from a list kept in code. Reading two `_target_`
keys needs no full composition (34 presets compose in seconds, read in milliseconds);
tests/test_method_records.py checks the reading against Hydra's composition of every preset. `check_divergence` runs before any data, model or
teacher is built; when the asked divergence does not fit the objective's `divergence_slot`, its
one-line `ConfigError` names what the method takes and the methods that take the asked divergence
(those of the same regime first), found by composing every preset.
"""

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from kdlab.conf import CONF_DIR, label
from kdlab.divergences import parameters
from kdlab.errors import ConfigError
from kdlab.objectives.base import DivergenceSlot, FixedDivergence, NoDivergence, Objective


@dataclass(frozen=True)
class Method:
    """One method preset: its name, the objective class and the regime (module class) it composes."""

    name: str
    objective: type[Objective]
    regime_target: str  # the module class's dotted path; importing it loads Lightning

    @property
    def slot(self) -> DivergenceSlot:
        return self.objective.divergence_slot

    @property
    def regime(self) -> type:
        return get_class(self.regime_target)


def method_names() -> list[str]:
    """Every method preset, `conf/method/<name>.yaml`."""
    return sorted(path.stem for path in (CONF_DIR / "method").glob("*.yaml"))


def preset_targets(path: Path) -> dict[str, str]:
    """The `objective` and `module` `_target_`s a preset file composes to.

    Follows its defaults list in Hydra's order (an implicit `_self_` comes last): a bare name is
    another preset of the same group, `/regime: NAME` a `conf/regime/` file, overrides of other
    groups (`override /divergence: ...`) set neither key. A key set to a key of the root config
    (`objective: ${teacher.objective}`) is read from conf/train.yaml.
    """
    node = OmegaConf.load(path)
    own = {key: _own_target(node, key) for key in ("objective", "module")}
    defaults = list(node.get("defaults", []))
    targets: dict[str, str] = {}
    for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        if entry == "_self_":
            targets.update({key: target for key, target in own.items() if target is not None})
        elif isinstance(entry, str):
            targets.update(preset_targets(path.parent / f"{entry}.yaml"))
        elif "/regime" in entry:
            targets.update(preset_targets(CONF_DIR / "regime" / f"{entry['/regime']}.yaml"))
    return targets


def _own_target(node: DictConfig, key: str) -> str | None:
    """`<key>._target_` as the preset `node` sets it, following `key: ${root.key}` into conf/train.yaml."""
    value = OmegaConf.to_container(node, resolve=False).get(key)
    if isinstance(value, str) and (root_key := re.fullmatch(r"\$\{([\w.]+)\}", value)):
        return OmegaConf.select(OmegaConf.load(CONF_DIR / "train.yaml"), f"{root_key.group(1)}._target_")
    return value.get("_target_") if isinstance(value, dict) else None


@functools.cache
def catalogue() -> tuple[Method, ...]:
    """Every method, read from its preset (`kdlab list`, and the error paths that name methods)."""
    methods = []
    for name in method_names():
        targets = preset_targets(CONF_DIR / "method" / f"{name}.yaml")
        methods.append(Method(name, get_class(targets["objective"]), targets["module"]))
    return tuple(methods)


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
