"""Which completed runs a report puts together: the cells of the table and of every figure.

The pooling rule. Completed runs fall into a (row, column) pair by their values of `rows` and `cols`
(method and divergence by default). Runs of one pair are pooled only if their configs agree on every
value except
  - the seed and the two axes, and
  - bookkeeping: `BOOKKEEPING` (run name, resume/ckpt_path, `paths.*`, the loggers' names, tags,
    groups and directories, Hydra's own settings, the progress bar) and any string that lies under the
    run's own directories (`paths.output_dir`, `paths.log_dir`, `paths.teacher_dir`: checkpoint
    directories, `trainer.default_root_dir`, cache directories), i.e. what differs between two runs
    of one command with different seeds, or the same seed run twice.
A config value on which the runs of some pair disagree (trainer.max_epochs of a 5- and a 30-epoch run)
becomes a *variant key*: every cell is then split by the runs' values of the variant keys, marked
`[trainer.max_epochs=5]`, and the report names the keys (use `--where KEY=VALUE` to keep one
setting, or make the key an axis with `--rows/--cols`). Within a cell, each seed counts once: of
several completed runs of one seed the newest (`results.json` written last) is counted and the
others are listed as repeats.
"""

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kdlab.errors import ConfigError
from kdlab.report.collect import ABSENT, Run, lookup

BOOKKEEPING = ("seed", "run_name", "resume", "ckpt_path", "paths", "logger", "hydra", "callbacks.progress_bar")
OWN_DIRECTORIES = ("paths.output_dir", "paths.log_dir", "paths.teacher_dir")
_NUMBER = re.compile(r"(-?\d+(?:\.\d*)?(?:e[-+]?\d+)?)")


def label(value: object) -> str:
    """A value as the report prints it: `none` for null, `—` for a field the run does not have."""
    if value is ABSENT:
        return "—"
    return "none" if value is None else str(value)


def natural(text: str) -> tuple[tuple[int, float, str], ...]:
    """Sort key that puts numbers in numeric order (2 < 10), also inside labels (`max_epochs=5` before
    `max_epochs=30`), and numbers before text."""
    parts = _NUMBER.split(text)  # text, number, text, number, ...
    return tuple((0, float(part), part) if index % 2 else (1, 0.0, part) for index, part in enumerate(parts) if part)


@dataclass(frozen=True, eq=False)
class Cell:
    """The runs counted together: one per distinct seed, all with the same `row`, `col` and `variant`
    (the values of the variant keys, `"trainer.max_epochs=5"`; empty when there are none)."""

    row: str
    col: str
    variant: str
    runs: tuple[Run, ...]

    @property
    def column(self) -> str:
        """The column's label in the table and the heatmap: `col`, then `[variant]` if any."""
        return f"{self.col} [{self.variant}]" if self.variant else self.col

    @property
    def name(self) -> str:
        """The cell in figure legends and notes: `row · column`."""
        return f"{self.row} · {self.column}"

    def sort_key(self) -> tuple:
        return natural(self.row), natural(self.col), natural(self.variant)


@dataclass
class Cells:
    """The cells of the completed runs, and what grouping them decided."""

    cells: list[Cell]
    variant_keys: list[str]
    repeats: list[tuple[Run, Run, Cell]]  # (an older run of a seed, the newer one counted, its cell)


def config_values(run: Run, axes: Sequence[str]) -> dict[str, str]:
    """The run's config as `{dotted key: JSON of the value}`, without the seed, the axes and bookkeeping."""
    own = [path for path in (lookup(run.config, key) for key in OWN_DIRECTORIES) if isinstance(path, str) and path]
    values = {}
    for key, value in leaves(run.config):
        if key in axes or any(key == skip or key.startswith(skip + ".") for skip in BOOKKEEPING):
            continue
        if isinstance(value, str) and any(value == path or value.startswith(path.rstrip(os.sep) + os.sep) for path in own):
            continue
        values[key] = json.dumps(value, sort_keys=True)
    return values


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every leaf of nested dicts; lists and empty dicts are leaves."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def group(runs: Sequence[Run], rows: str, cols: str) -> Cells:
    """The cells of the completed runs among `runs` (see the module docstring for the rule)."""
    completed = [run for run in runs if run.status == "completed"]
    pairs: dict[tuple[str, str], list[Run]] = {}
    for run in completed:
        pairs.setdefault((label(run.get(rows)), label(run.get(cols))), []).append(run)
    values = {id(run): config_values(run, (rows, cols)) for run in completed}
    variant_keys = sorted({key for members in pairs.values() for key in differing(values[id(run)] for run in members)})

    def variant(run: Run) -> str:
        return ", ".join(f"{key}={label(json.loads(values[id(run)][key]) if key in values[id(run)] else ABSENT)}"
                         for key in variant_keys)

    cells, repeats = [], []
    members: dict[tuple[str, str, str], list[Run]] = {}
    for (row, col), pair in pairs.items():
        for run in pair:
            members.setdefault((row, col, variant(run)), []).append(run)
    for (row, col, variant_label), group_runs in members.items():
        by_seed: dict[str, list[Run]] = {}
        for run in group_runs:
            by_seed.setdefault(label(run.get("seed")), []).append(run)
        newest = {seed: max(seed_runs, key=lambda run: (run.written, str(run.run_dir))) for seed, seed_runs in by_seed.items()}
        cell = Cell(row, col, variant_label, tuple(newest[seed] for seed in sorted(newest, key=natural)))
        cells.append(cell)
        repeats += [(run, newest[seed], cell) for seed, seed_runs in by_seed.items() for run in seed_runs if run is not newest[seed]]
    return Cells(sorted(cells, key=Cell.sort_key), variant_keys, sorted(repeats, key=lambda item: str(item[0].run_dir)))


def differing(configs: Iterable[dict[str, str]]) -> set[str]:
    """The keys whose value (or presence) is not the same in all `configs`."""
    configs = list(configs)
    keys = set().union(*configs) if configs else set()
    return {key for key in keys if len({config.get(key) for config in configs}) > 1}


def matches(value: Any, wanted: str) -> bool:
    """Whether a run's `value` is what `--where KEY=wanted` asks: the same text as `label` prints, or
    the same number (`5` = 5.0, `1e-2` = 0.01), or the same boolean (`true`)."""
    if value is ABSENT:
        return False
    if label(value) == wanted:
        return True
    if isinstance(value, bool):
        return wanted.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(wanted) == value
        except ValueError:
            return False
    return False


def parse_where(conditions: Sequence[str]) -> list[tuple[str, str]]:
    """`["trainer.max_epochs=5"]` -> `[("trainer.max_epochs", "5")]`; ConfigError on a condition without `=`."""
    parsed = []
    for condition in conditions:
        key, equals, wanted = condition.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"--where {condition!r}: write KEY=VALUE, e.g. --where trainer.max_epochs=5")
        parsed.append((key.strip(), wanted.strip()))
    return parsed


def select(runs: Sequence[Run], conditions: Sequence[tuple[str, str]]) -> list[Run]:
    """The runs that match every `--where` condition (invalid runs are always kept: nothing says what they
    were). ConfigError, naming the values that exist, when a key is in no run or no run matches."""
    known = [run for run in runs if run.status != "invalid"]
    for key, wanted in conditions:
        seen = sorted({label(run.get(key)) for run in known if run.get(key) is not ABSENT}, key=natural)
        if not seen:
            raise ConfigError(f"--where {key}={wanted}: no run has {key} (a results.json field such as method, "
                              f"or a config path such as trainer.max_epochs)")
        if not any(matches(run.get(key), wanted) for run in known):
            raise ConfigError(f"--where {key}={wanted}: no run has {key}={wanted}; its values are {', '.join(seen)}")
    return [run for run in runs if run.status == "invalid" or all(matches(run.get(key), wanted) for key, wanted in conditions)]


def check_axis(runs: Sequence[Run], option: str, key: str) -> None:
    """ConfigError when no completed run has `key`, the field or config path given to `option`."""
    completed = [run for run in runs if run.status == "completed"]
    if completed and all(run.get(key) is ABSENT for run in completed):
        raise ConfigError(f"{option} {key}: no completed run has {key} (a results.json field such as method, "
                          f"or a config path such as objective.temperature)")
