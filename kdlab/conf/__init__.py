"""Hydra configs of kdlab (a package so that Hydra finds them with `pkg://kdlab.conf`).

The YAML groups live beside this file. The `divergence` group is made here, from the divergence
registry: `divergence=<name>` for every registered name and alias, with the function's keyword
parameters and defaults as typed keys (`divergence.alpha=0.3`), and `divergence=none` for methods
without a divergence slot (`name: null`). `kdlab.run` builds the divergence from this node
(`kdlab.divergences.get(name, **parameters)`) for the objectives that take one. Importing this
package registers the group, the `${label:...}` resolver (a value as names print it: null is
`none`) and `${differs:...}` (what a run directory's name adds, `kdlab.run_dirs`) with Hydra and OmegaConf.
"""

import dataclasses
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from kdlab.divergences import ALIASES, REGISTRY, parameters
from kdlab.divergences.registry import parameter_types
from kdlab.run_dirs import differs

CONF_DIR = Path(__file__).parent


def label(value: Any) -> str:
    """`value` as run names, tags and tables print it: None is "none"."""
    return "none" if value is None else str(value)


def divergence_config(name: str | None) -> type:
    """A dataclass `{name, **parameters}` with the registry's defaults and annotated types."""
    fields: list[tuple[str, Any, dataclasses.Field]] = [("name", str | None, dataclasses.field(default=name))]
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
OmegaConf.register_new_resolver("label", label, replace=True)
OmegaConf.register_new_resolver("differs", differs, replace=True)  # what a run directory's name adds (kdlab.run_dirs)
