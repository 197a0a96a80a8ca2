"""The run's record on disk: results.json (and a text classifier's labels.json), written atomically next to the checkpoints.

Every file kdlab writes goes through `write_atomic`: readers see the old file or the new one, never half
of one, and the file gets the permissions of the user's umask (and the directory's default ACL), as a
plain `open()` would give it, so that colleagues sharing the directory can read it.
"""

import errno
import json
import os
import platform
import secrets
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from kdlab.errors import StorageError

RESULTS_FILE = "results.json"
LABELS_FILE = "labels.json"  # a classifier's class names by id, {"0": name, ...} (a Hugging Face config's id2label)
_PACKAGES = ("kdlab", "torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "transformers", "wandb")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` so that readers see the old file or the new one, never half of one."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_labels(directory: Path, labels: list[str]) -> None:
    """`LABELS_FILE` in `directory`: the class names of the data, by class id."""
    write_json_atomic(Path(directory) / LABELS_FILE, {str(i): label for i, label in enumerate(labels)})


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text or bytes to `path` so that readers see the old file or the new one, never half of one.

    The data go to a temporary file in the same directory, created with mode 0666 less the umask, are
    flushed to disk, then renamed over `path`. A failure (a full disk, a read-only directory) leaves
    `path` as it was, removes the temporary file and raises `StorageError` naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temporary(path)
    except OSError as error:
        raise storage_error(path, error) from error
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, StorageError):
            raise storage_error(path, error) from error
        raise


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new, empty, hidden file beside `path`, opened for writing. Unlike `tempfile.mkstemp` (always
    0600) it is created with mode 0666, which the kernel reduces by the umask."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def storage_error(path: Path, error: OSError) -> StorageError:
    """`error` (raised while writing `path`) as one line that names the file, the reason and the fix."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space (or quota) on that file system, or write elsewhere"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {path.parent} writable for you, or write elsewhere"
    else:
        fix = "check that file system, or write elsewhere"
    reason = error.strerror or str(error)
    problem = StorageError(f"cannot write {path}: {reason}; {fix}")
    problem.errno = error.errno
    return problem


def environment_versions() -> dict[str, str]:
    """Python and the versions of the packages a result depends on."""
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions
