"""Shared test set-up: no network, outputs in a temporary directory, a helper to run the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import run_cli

# Nothing in the tests may reach a hub or W&B's servers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

KDLAB = [str(Path(sys.executable).parent / "kdlab")]  # the console script, as users run it
FAST = ["trainer.max_epochs=2", "teacher.max_epochs=2", "logger=none"]


def kdlab(*args: str, outputs: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `kdlab ARGS` in a new process (`run_cli`) with its outputs under `outputs`; return the result."""
    env = {**os.environ, "KDLAB_OUTPUTS": str(outputs), "PYTHONUNBUFFERED": "1"}
    result = run_cli([*KDLAB, *args], env=env, cwd=outputs.parent, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"kdlab {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return tmp_path / "outputs"
