"""Imports only point down: every `kdlab/**/*.py` is parsed, and no module imports a higher layer or
sits on an import cycle (imports inside functions and under TYPE_CHECKING count too)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdlab"

# Layer of each top-level part of kdlab, lowest first: a module may import its own layer and those below.
LAYERS = {
    "kdlab": 0,  # the package's own __init__ (version)
    "kdlab.errors": 0, "kdlab.tokens": 0, "kdlab.fingerprint": 0, "kdlab.distributed": 0, "kdlab.results": 0,
    "kdlab.checks": 0, "kdlab.devices": 0, "kdlab.run_logs": 0, "kdlab.annotations": 0, "kdlab.cache": 0, "kdlab.checkpoints": 0,
    "kdlab.run_dirs": 0,
    "kdlab.divergences": 1,
    "kdlab.conf": 2,
    "kdlab.models": 2, "kdlab.oracle": 3, "kdlab.synthetic": 3, "kdlab.rewards": 3, "kdlab.data": 4,
    "kdlab.objectives": 5,
    "kdlab.metrics": 6, "kdlab.lm_teacher_outputs": 6,
    "kdlab.modules": 7,
    "kdlab.loggers": 8, "kdlab.teachers": 8, "kdlab.resume": 8, "kdlab.summary": 8, "kdlab.methods": 8,
    "kdlab.validate": 8, "kdlab.resumable": 8, "kdlab.teacher_outputs": 8,
    "kdlab.run": 9, "kdlab.report": 9,
    "kdlab.train": 10, "kdlab.saved_run": 10, "kdlab.evaluate": 10, "kdlab.export": 10,
    "kdlab.cli": 11,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part(name: str) -> str:
    """The entry of LAYERS a module belongs to (`kdlab.objectives.dkd` -> `kdlab.objectives`)."""
    return name if name == "kdlab" else ".".join(name.split(".")[:2])


def imports(path: Path, name: str) -> set[str]:
    """The kdlab modules `path` imports (relative imports resolved; `from a import b` counts `a.b` when it is a module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {target for target in found if target == "kdlab" or target.startswith("kdlab.")}


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {target for target in imports(path, name) if target in modules and target != name} for name, path in modules.items()}


def test_every_part_has_a_layer() -> None:
    unplaced = sorted({part(name) for name in import_graph()} - set(LAYERS))
    assert not unplaced, f"add these to LAYERS in tests/test_layers.py: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{name} ({LAYERS[part(name)]}) imports {target} ({LAYERS[part(target)]})"
              for name, targets in import_graph().items() for target in sorted(targets)
              if LAYERS.get(part(target), 0) > LAYERS.get(part(name), 0)]
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle() -> None:
    graph = import_graph()
    # A package's __init__ importing its own modules (re-exports) is not a cycle of the code.
    edges = {name: {t for t in targets if not (t.startswith(f"{name}.") or name.startswith(f"{t}."))} for name, targets in graph.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target] if target in trail else [name, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_the_check_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The parser above on known cases: a relative upward import is found."""
    path = PACKAGE / "objectives" / "dkd.py"
    assert "kdlab.objectives.targets" in imports(path, "kdlab.objectives.dkd")
    fake = tmp_path / "fake.py"
    fake.write_text("from ..modules import base\nimport kdlab.run\n\ndef f():\n    from kdlab.cli import main\n")
    assert imports(fake, "kdlab.objectives.fake") >= {"kdlab.modules", "kdlab.modules.base", "kdlab.run", "kdlab.cli"}
