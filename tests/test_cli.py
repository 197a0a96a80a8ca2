"""The `kdlab` command as a user meets it: help, listings, and clear errors for unknown names."""

from pathlib import Path

import pytest
from conftest import kdlab


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
