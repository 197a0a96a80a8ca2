"""The run's record on disk: results.json, written atomically next to the checkpoints."""

import json
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
_PACKAGES = ("kdlab", "torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "transformers", "wandb")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` so that readers see the old file or the new one, never half of one."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text or bytes to `path` so that readers see the old file or the new one, never half of one.

    The data go to a temporary file in the same directory, are flushed to disk, then renamed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def environment_versions() -> dict[str, str]:
    """Python and the versions of the packages a result depends on."""
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions
