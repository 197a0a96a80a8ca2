"""The `kdlab` command as a user meets it: help, listings, and clear errors for unknown names."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import KDLAB, kdlab

HEAVY = ("lightning", "torchmetrics", "transformers", "torchvision", "wandb")  # what a training run imports


@pytest.mark.parametrize(
    ("override", "group", "valid"),
    [("+method=nope", "method", ["kd", "scratch"]), ("divergence=nope", "divergence", ["fkl", "rkl"])],
)
def test_unknown_option_fails_at_once_listing_valid_names(override: str, group: str, valid: list[str], outputs: Path) -> None:
    result = kdlab("train", override, outputs=outputs, check=False, timeout=60)
    assert result.returncode != 0
    assert f"Could not find '{group}/nope'" in result.stderr
    listed = result.stderr.split(f"Available options in '{group}':")[1]
    for name in valid:
        assert f"\t{name}\n" in listed
    assert not (outputs / "runs").exists()


def test_help_lists_the_config_groups(outputs: Path) -> None:
    text = kdlab("train", "--help", outputs=outputs, timeout=60).stdout
    for group in ("model:", "dataset:", "divergence:", "hardware:", "logger:", "trainer:", "paths:", "method:"):
        assert group in text
    methods = next(line for line in text.splitlines() if line.startswith("method: "))
    assert {"kd", "scratch"} <= set(methods.removeprefix("method:").replace(",", " ").split())


def test_cfg_job_prints_the_composed_config_with_overrides(outputs: Path) -> None:
    text = kdlab("train", "--cfg", "job", "trainer.max_epochs=3", "dataset.batch_size=32", outputs=outputs, timeout=60).stdout
    assert "max_epochs: 3" in text
    assert "batch_size: 32" in text
    assert not (outputs / "runs").exists()


def test_list_prints_every_registry(outputs: Path) -> None:
    text = kdlab("list", outputs=outputs, timeout=120).stdout
    for expected in ("methods", "scratch", "divergences", "fkl", "models", "digits_cnn", "datasets", "digits"):
        assert expected in text
    only_methods = kdlab("list", "methods", outputs=outputs, timeout=120).stdout
    assert "scratch" in only_methods and "divergences" not in only_methods
    assert "│ fdpo" in only_methods and "rkl|fkl|js|alpha" in only_methods  # the divergences each method takes


@pytest.mark.parametrize("command", [["--help"], ["list"], ["train", "--cfg", "job"], ["train", "+method=dkd", "--cfg", "job"]],
                         ids=" ".join)
def test_answers_without_training_load_no_training_library(command: list[str], tmp_path: Path) -> None:
    """`kdlab --help`, `kdlab list` and `kdlab train --cfg job` start as fast as torch does: no Lightning (nor what it
    imports: torchmetrics, transformers, torchvision) is imported. A fresh interpreter, not run_cli's preloaded one."""
    report = "import atexit, sys; atexit.register(lambda: print('LOADED', *sorted(m for m in HEAVY if m in sys.modules), file=sys.stderr))"
    script = f"HEAVY = {HEAVY!r}; {report}; import runpy; sys.argv = {[*KDLAB, *command]!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KDLAB_OUTPUTS": str(tmp_path / "outputs")})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "LOADED", result.stderr

