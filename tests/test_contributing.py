"""CONTRIBUTING.md's steps, followed: a copy of the package gets exactly the files its examples name
(a toy divergence and a toy method), nothing else is edited, and `kdlab train +method=toy divergence=toy`
trains and records them."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from cli_process import run_cli
from conftest import KDLAB

import kdlab

ROOT = Path(__file__).resolve().parents[1]
# A fenced block of the guide whose info string names the file it is: ```python kdlab/divergences/toy.py
EXAMPLE = re.compile(r"^( *)```\w+ (kdlab/\S+)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def examples() -> dict[str, str]:
    """Path -> content of every example file in CONTRIBUTING.md (indentation of the list item removed)."""
    found = {}
    for indent, path, body in EXAMPLE.findall((ROOT / "CONTRIBUTING.md").read_text()):
        found[path] = "".join(line.removeprefix(indent) for line in body.splitlines(keepends=True))
    return found


def test_the_guide_adds_one_file_for_a_divergence_and_two_for_a_method() -> None:
    assert set(examples()) == {"kdlab/divergences/toy.py", "kdlab/objectives/toy.py", "kdlab/conf/method/toy.yaml"}


@pytest.mark.slow
def test_a_toy_divergence_and_method_train_from_their_files_alone(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(Path(kdlab.__file__).parent, copy / "kdlab", ignore=shutil.ignore_patterns("__pycache__"))
    for path, content in examples().items():
        assert not (copy / path).exists(), f"{path} must be a new file"
        (copy / path).write_text(content)
    outputs = tmp_path / "outputs"
    env = {**os.environ, "PYTHONPATH": str(copy), "KDLAB_OUTPUTS": str(outputs)}
    result = run_cli(
        [*KDLAB, "train", "+method=toy", "divergence=toy", "divergence.scale=2", "trainer.max_steps=2", "trainer.max_epochs=1",
         "teacher.max_epochs=1", "logger=none"],
        env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (record,) = [json.loads(path.read_text()) for path in outputs.rglob("results.json")]
    assert record["status"] == "completed" and record["run_name"] == "toy-toy-digits_cnn-digits-s0"
    assert (record["method"], record["divergence"], record["divergence_params"]) == ("toy", "toy", {"scale": 2.0})
    assert record["objective"] == {"class": "kdlab.objectives.toy.ToyKD",
                                   "arguments": {"weight": 0.5, "divergence": {"name": "toy", "scale": 2.0}}}
    assert "train/kd" in record["metrics"]
    listed = run_cli([*KDLAB, "list", "methods"], env=env, cwd=tmp_path).stdout
    assert re.search(r"│ toy\s+│ any\s+│ Toy KD", listed), listed
