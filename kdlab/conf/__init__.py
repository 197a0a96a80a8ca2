"""Hydra configs of kdlab (a package so that Hydra finds them with `pkg://kdlab.conf`).

The YAML groups live beside this file. The `divergence` group is made here, from the divergence
registry: `divergence=<name>` for every registered name and alias, with the function's keyword
parameters and defaults as typed keys (`divergence.alpha=0.3`), and `divergence=none` for methods
without a divergence slot (`name: null`). Importing this package registers them with Hydra.
"""

import dataclasses
from typing import Any

from hydra.core.config_store import ConfigStore

from kdlab.divergences import ALIASES, REGISTRY, parameters
from kdlab.divergences.registry import parameter_types


def divergence_config(name: str | None) -> type:
    """A dataclass `{name, **parameters}` with the registry's defaults and annotated types."""
    fields: list[tuple[str, Any, dataclasses.Field]] = [
        ("_target_", str, dataclasses.field(default="kdlab.divergences.get")),
        ("name", str | None, dataclasses.field(default=name)),
    ]
    if name is not None:
        types = parameter_types(name)
        fields += [(key, types[key], dataclasses.field(default=default)) for key, default in parameters(name).items()]
    return dataclasses.make_dataclass(f"Divergence_{name or 'none'}", fields)


def register_divergences() -> None:
    store = ConfigStore.instance()
    store.store(group="divergence", name="none", node=divergence_config(None))
    for name in [*REGISTRY, *ALIASES]:
        store.store(group="divergence", name=name, node=divergence_config(ALIASES.get(name, name)))


register_divergences()
