"""A Hydra sweeper whose grid is a union of cartesian blocks: `hydra/sweeper=kdlab_grid`.

Hydra's basic sweeper runs one cartesian product, so a method x divergence grid would also run every
method that takes no divergence once per divergence (and those jobs would be refused). Here the
grid is a list of blocks, each a product of its own axes, and `params` are axes every block shares:

    hydra:
      sweeper:
        grid:
          - {method: "kd,dkd", divergence: "fkl,rkl"}   # 4 jobs per seed
          - {method: "scratch,nkd"}                     # 2 jobs per seed: their presets' divergence
        params:
          seed: 0,1,2

Command-line overrides of a multirun combine with the grid this way: a key some block sweeps
*restricts* that key, in the blocks that sweep it, to the values given (`divergence=fkl,rkl`,
`method=kd`); a block left without a value for one of its keys is dropped, and blocks that do not
sweep the key are kept as they are. Any other key (`seed=0,1`, `trainer.max_epochs=5`) applies to
every job of every block, as with the basic sweeper. A command that leaves no job fails naming the
keys. Launching, batching and job numbering are the basic sweeper's.
"""

import itertools
from dataclasses import dataclass, field
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.kdlab_grid_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None  # axes of every block
    grid: list[dict[str, str]] = field(default_factory=list)  # the blocks: {key: "v1,v2,..."} each


ConfigStore.instance().store(group="hydra/sweeper", name="kdlab_grid", node=GridSweeperConf, provider="kdlab")


def _values(override: Override) -> list[str]:
    """The override as one job line per value: `["method=kd", "method=dkd"]`, `["~callbacks.progress_bar"]`."""
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            raise HydraException(f"the kdlab grid sweeper takes lists of values, not {override.input_line}")
        return [f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()]
    return [override.input_line or f"{override.get_key_element()}={override.get_value_element_as_str()}"]


def grid_jobs(grid: list[dict[str, Any]], params: dict[str, Any], arguments: list[Override]) -> list[list[str]]:
    """The overrides of every job: each block's product of its axes and `params`, restricted or extended
    by the command line's `arguments` as the module docstring says. Blocks keep their order."""
    parser = OverridesParser.create()

    def axes_of(values: dict[str, Any]) -> dict[str, list[str]]:
        parsed = parser.parse_overrides([f"{key}={value}" for key, value in values.items()])
        return {override.key_or_group: _values(override) for override in parsed}

    common = axes_of(params)
    blocks = [axes_of(block) for block in grid] or [{}]
    swept = {key for block in blocks for key in block}
    jobs: list[list[str]] = []
    for block in blocks:
        axes = common | block
        for argument in arguments:
            key, given = argument.key_or_group, _values(argument)
            if key not in swept:
                axes[key] = given
            elif key in block:
                axes[key] = [value for value in block[key] if value in given]
        if all(axes.values()):
            jobs += [list(combination) for combination in itertools.product(*axes.values())]
    if not jobs:
        restricted = ", ".join(argument.input_line for argument in arguments if argument.key_or_group in swept)
        raise HydraException(f"no job of the grid is left by {restricted}: the grid sweeps {', '.join(sorted(swept))} over its own values")
    return jobs


class GridSweeper(BasicSweeper):
    """Hydra's basic sweeper over `grid_jobs` (a union of cartesian blocks) instead of one product."""

    def __init__(self, max_batch_size: int | None, params: dict[str, Any] | None = None, grid: list[dict[str, Any]] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grid = [dict(block) for block in grid or []]

    def _parse_config(self) -> list[str]:
        return []  # `params` are combined with the grid in `split_arguments`

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        jobs = grid_jobs(self.grid, dict(self.params), overrides)
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))
