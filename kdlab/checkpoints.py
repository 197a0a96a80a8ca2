"""Reading `torch.save` files (Lightning checkpoints, state dicts) that may be truncated or corrupt,
and writing Lightning's checkpoints so that they never are (`AtomicCheckpointIO`).

`torch.load` does not check the CRC-32 that the zip container of a `torch.save` file stores for every
record, so a flipped bit loads silently, and a truncated or overwritten file fails with advice to
re-run with `weights_only=False` that would not help. `check_checkpoint` tests the container whole
first (Python's `zipfile`, no unpickling) and names the file and the fix.
"""

import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from kdlab.errors import DataError
from kdlab.results import write_atomic


def check_checkpoint(path: str | Path, setting: str = "") -> Path:
    """`path`, after checking that it is a complete, uncorrupted `torch.save` file (every record's CRC-32).

    `setting` names where the path came from (`teacher.ckpt_path`, `ckpt_path`) for the message.
    Raises `DataError` (naming the file and saying to delete or replace it) otherwise.
    """
    path = Path(path)
    named = f"{setting}={path}" if setting else str(path)
    if not path.is_file():
        raise DataError(f"{named} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError) as error:
        raise DataError(f"{named} is not a complete checkpoint ({error}): it is truncated or corrupt; delete or replace it") from error
    if damaged is not None:
        raise DataError(f"{named} is corrupt (its record {damaged} fails its CRC-32 check); delete or replace it")
    return path


def read_checkpoint(path: str | Path, setting: str = "") -> Any:
    """The contents of the `torch.save` file `path`, checked by `check_checkpoint`, loaded on the CPU
    with `weights_only=True` (tensors and plain containers only: nothing in the file can run code)."""
    path = check_checkpoint(path, setting)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        named = f"{setting}={path}" if setting else str(path)
        raise DataError(f"{named} holds Python objects other than tensors, which kdlab does not unpickle: "
                        "give a Lightning checkpoint of a kdlab run or a plain state_dict") from error


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, saving through `kdlab.results.write_atomic`: the checkpoint is
    serialised in memory, written to a temporary file beside its path, flushed to disk and renamed over
    it. A process killed while saving leaves the previous checkpoint whole; a full or read-only disk is
    a `StorageError` naming the checkpoint file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(Path(path), buffer.getbuffer())
