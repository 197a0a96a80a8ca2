"""Train-once cache entries on shared storage: built by one job, read by every job, checked before use.

An entry `<root>/<key>/` holds files whose SHA-256 its `manifest.json` lists. It is built in a staging
directory `<root>/.<key>.building-<token>/` and renamed into place whole, so readers see no entry or a
complete one. Reading takes no lock and writes nothing (a read-only cache works); an entry whose files
do not match its manifest (truncated, overwritten, bit rot, or written before manifests existed) is
logged and rebuilt.

Building takes the lease lock `<root>/<key>.lease` (filelock's `SoftFileLease`: a marker file that
names the holder's host and pid, and that the holder refreshes every `LEASE_S / 3` seconds). A holder
that died on this host is recognised at once (its pid is gone) and its lock broken; a holder on
another host, once its lease has gone unrefreshed for `LEASE_S` seconds. `<root>/<key>.holder.json`
says who holds the lock and since when; jobs waiting for the entry print it every `WAIT_MESSAGE_S`
seconds, and take the entry as soon as it is complete.
"""

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from filelock import SoftFileLease, Timeout

from kdlab.errors import StorageError
from kdlab.results import storage_error, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LEASE_S = 180.0  # a lock whose holder (on another host) has not refreshed it for this long is broken
POLL_S = 1.0  # how often a waiting job looks for the lock and for the finished entry
WAIT_MESSAGE_S = 60.0  # how often a waiting job says whom it waits for


class CorruptEntry(Exception):
    """An entry directory whose files do not match its manifest."""


@dataclass(frozen=True)
class Entry:
    """A complete cache entry: its directory, its files' contents, and whether this job built it."""

    path: Path
    files: dict[str, bytes]
    built: bool


def read_entry(path: Path) -> dict[str, bytes] | None:
    """The files of the entry at `path`, each checked against its SHA-256 in the manifest; None when
    there is no entry. Raises `CorruptEntry` (saying what is wrong) for an entry that does not check out,
    and `StorageError` for a file that exists but cannot be read (permissions)."""
    try:
        manifest = json.loads(_read(path / MANIFEST))
        listed = dict(manifest["files"])
    except FileNotFoundError:
        if path.exists():
            raise CorruptEntry(f"it has no {MANIFEST} (incomplete, or written by an older kdlab)") from None
        return None
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptEntry(f"its {MANIFEST} is unreadable ({error})") from None
    files = {}
    for name, digest in listed.items():
        try:
            files[name] = _read(path / name)
        except FileNotFoundError:
            raise CorruptEntry(f"{name} is missing") from None
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise CorruptEntry(f"{name} does not match its SHA-256 in {MANIFEST} (truncated or overwritten)")
    return files


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise StorageError(f"cannot read {path}: {error.strerror or error}; ask its owner to make it readable "
                           f"(chmod -R a+rX {path.parent}), or use another cache directory") from error


def load_or_build(root: Path, key: str, build: Callable[[Path], Mapping[str, bytes]], what: str, setting: str) -> Entry:
    """The entry `root/key`: read if it is complete, else built now by `build(staging_dir)` (which returns
    the files to store, name -> bytes; it may also leave logs in `staging_dir`), under the entry's lock,
    once however many jobs ask at the same time.

    `what` names the entry in messages (`teacher 1a2b...`), `setting` the config key that chose `root`
    (`paths.teacher_dir`). Raises `StorageError` when the entry must be built and `root` is not writable.
    """
    path = root / key
    try:
        files = read_entry(path)
    except CorruptEntry as problem:
        log.warning("The cached %s in %s is corrupt: %s; building it again", what, path, problem)
        files = None
    if files is not None:
        log.info("Loaded %s from the cache: %s", what, path)
        return Entry(path, files, built=False)

    lock = SoftFileLease(root / f"{key}.lease", lease_duration=LEASE_S)
    holder = _holder_file(root, key)
    try:
        root.mkdir(parents=True, exist_ok=True)
        files = _acquire_or_wait(lock, holder, path, what)
    except StorageError:
        raise
    except OSError as error:
        raise StorageError(f"{setting}={root} cannot be written ({error.strerror or error}) and does not hold a complete "
                           f"{what}: make it writable, or set {setting} to a writable directory") from error
    if files is not None:
        log.info("Loaded %s, built by another job meanwhile: %s", what, path)
        return Entry(path, files, built=False)
    try:
        write_json_atomic(holder, {"host": socket.gethostname(), "pid": os.getpid(), "token": lock.token,
                                   "since": datetime.now().astimezone().isoformat(), "building": what})
        return _build_locked(root, key, build, what)
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _holder_file(root: Path, key: str) -> Path:
    return root / f"{key}.holder.json"


def _acquire_or_wait(lock: SoftFileLease, holder: Path, path: Path, what: str) -> dict[str, bytes] | None:
    """Take `lock` (None), or return the entry's files as soon as another job completes it."""
    last_message = None
    while True:
        try:
            lock.acquire(timeout=POLL_S, poll_interval=min(0.25, POLL_S))
            return None
        except Timeout:
            pass
        try:
            files = read_entry(path)
        except CorruptEntry:
            files = None  # the holder is replacing it
        if files is not None:
            return files
        if last_message is None or time.monotonic() - last_message >= WAIT_MESSAGE_S:
            log.info("Waiting for %s: %s (lock %s)", what, _describe_holder(lock, holder), lock.lock_file)
            last_message = time.monotonic()


def _describe_holder(lock: SoftFileLease, holder: Path) -> str:
    """Who holds `lock` and since when, from its marker and the record `holder` its holder wrote."""
    owner = lock.owner
    if owner is None:
        return "its holder is releasing the lock"
    try:
        record = json.loads(holder.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("token") != owner.token:  # a record left by an earlier holder, or not written yet
        return f"pid {owner.pid} on {owner.hostname} is building it"
    since = datetime.fromisoformat(record["since"])
    minutes = (datetime.now(since.tzinfo) - since).total_seconds() / 60
    return f"pid {record['pid']} on {record['host']} has been building it since {since:%Y-%m-%d %H:%M:%S} ({minutes:.0f} min)"


def _build_locked(root: Path, key: str, build: Callable[[Path], Mapping[str, bytes]], what: str) -> Entry:
    """With the entry's lock held: the entry if it is complete now, else built, stored and returned."""
    path = root / key
    try:
        files = read_entry(path)
    except CorruptEntry:
        files = None
        try:
            shutil.rmtree(path)
        except OSError as error:
            raise StorageError(f"the cached {what} in {path} is corrupt and cannot be removed ({error.strerror or error}): "
                               "delete it") from error
    if files is not None:
        return Entry(path, files, built=False)
    for leftover in root.glob(f".{key}.building-*"):  # staging directories of holders that died
        shutil.rmtree(leftover, ignore_errors=True)

    staging = root / f".{key}.building-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
    except OSError as error:
        raise storage_error(path, error) from error
    try:
        files = dict(build(staging))
        _store(staging, files, path)
        try:
            staging.rename(path)
        except OSError:
            # A job that took over a lease this one failed to refresh stored the entry first: use its copy,
            # as every other job does.
            stored = read_entry(path) if path.exists() else None
            if stored is None:
                raise
            log.warning("Another job stored %s meanwhile: using its copy, %s", what, path)
            return Entry(path, stored, built=False)
        return Entry(path, files, built=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _store(directory: Path, files: Mapping[str, bytes], entry: Path) -> None:
    """Write `files` into `directory`, then the manifest with their SHA-256 (its presence completes an
    entry); a failure names the file as it would be in `entry`."""
    manifest = {"files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
                "created": datetime.now().astimezone().isoformat(), "host": socket.gethostname()}
    for name, data in [*files.items(), (MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())]:
        try:
            (directory / name).write_bytes(data)
        except OSError as error:
            raise storage_error(entry / name, error) from error
