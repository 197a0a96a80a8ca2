"""Shared storage: files follow the umask, a read-only teacher cache serves what it holds, a full disk
or an unwritable directory is one clear line and never a partial file.

"Unwritable" is real: mode a-w, and for root (whom modes do not stop) the effective uid of `nobody`
while the code under test runs, in a directory every user can read. "Full" is an `os.fsync` that
fails with ENOSPC in-process, and, where mount namespaces are allowed, a real 64 KiB tmpfs.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import FAST, KDLAB
from test_configs import compose_train
from test_teacher_cache import FILES, build, teacher_setup

from kdlab import teachers
from kdlab.cache import MANIFEST, read_entry
from kdlab.errors import StorageError
from kdlab.fingerprint import fingerprint
from kdlab.results import write_atomic, write_json_atomic
from kdlab.run import run
from kdlab.teachers import WEIGHTS_FILE, load_teacher, teacher_config

NOBODY = 65534


@contextmanager
def unwritable(*paths: Path) -> Iterator[None]:
    """While inside, nothing can be created in or removed from `paths` by this process."""
    modes = {path: path.stat().st_mode for path in paths}
    for path, mode in modes.items():
        path.chmod(mode & ~0o222)
    try:
        if os.geteuid() == 0:
            os.seteuid(NOBODY)
            try:
                yield
            finally:
                os.seteuid(0)
        else:
            yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that every user can read (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="kdlab-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under `root` (itself included) with its mode, size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


def disk_full(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# -- the umask -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_and_directories_follow_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "run" / "results.json", {"status": "completed"})
        write_atomic(tmp_path / "report" / "table.md", "| a |\n")
        entry = build(tmp_path / "teachers")
    finally:
        os.umask(previous)
    files = [tmp_path / "run" / "results.json", tmp_path / "report" / "table.md", *entry.path.iterdir()]
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: file_mode for p in files}
    for directory in (tmp_path / "run", tmp_path / "report", tmp_path / "teachers", entry.path):
        assert directory.stat().st_mode & 0o777 == dir_mode, directory


# -- a full disk, an unwritable directory --------------------------------------------------------------------

def test_a_full_disk_keeps_the_old_file_and_names_the_new_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StorageError) as error:
        write_json_atomic(path, {"b": 2})
    assert str(error.value) == f"cannot write {path}: No space left on device; free space (or quota) on that file system, or write elsewhere"
    assert isinstance(error.value, OSError) and error.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_an_unwritable_directory_is_one_line_naming_the_file(shared_dir: Path) -> None:
    path = shared_dir / "results.json"
    with unwritable(shared_dir), pytest.raises(StorageError) as error:
        write_json_atomic(path, {"a": 1})
    assert str(error.value) == f"cannot write {path}: Permission denied; make {shared_dir} writable for you, or write elsewhere"
    assert list(shared_dir.iterdir()) == []


def test_a_full_disk_while_storing_a_cache_entry_leaves_no_part_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = Path.write_bytes

    def write_until_full(self: Path, data: bytes) -> int:
        if self.name == "weights.bin":
            real_write(self, data[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_until_full)
    with pytest.raises(StorageError, match=r"cannot write .*/weights.bin: No space left on device"):
        build(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no entry, no staging directory, no lock
    monkeypatch.undo()
    assert build(tmp_path).files == FILES


def test_a_run_that_cannot_write_its_results_fails_in_one_line_and_leaves_none(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    cfg = compose_train(["+method=scratch", "trainer.max_epochs=1", "logger=none", f"paths.log_dir={tmp_path}",
                         f"paths.output_dir={run_dir}"], run_dir)
    real_fsync = os.fsync

    def full_for_results(fd: int) -> None:  # the disk fills up during training: results.json cannot be written
        if "results.json" in os.readlink(f"/proc/self/fd/{fd}"):
            disk_full(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_results)
    with pytest.raises(StorageError) as error:
        run(cfg)
    assert str(error.value).startswith(f"cannot write {run_dir / 'results.json'}: No space left on device; ")
    assert "\n" not in str(error.value)
    assert not [p for p in run_dir.iterdir() if "results.json" in p.name]


# -- a read-only teacher cache -------------------------------------------------------------------------------

def test_a_read_only_cache_that_holds_the_teacher_serves_it_and_writes_nothing(shared_dir: Path) -> None:
    first = load_teacher(*teacher_setup(shared_dir))
    assert first.source == "trained"
    cache_dir = shared_dir / "teachers"
    before = tree(cache_dir)
    setup = teacher_setup(shared_dir)
    with unwritable(cache_dir, first.path.parent):
        cached = load_teacher(*setup)
    assert cached.source == "cache" and cached.metrics == first.metrics
    assert tree(cache_dir) == before  # no lock file, no holder record: not even the directory's mtime moved


@pytest.mark.parametrize("state", ["missing", "corrupt"])
def test_a_read_only_cache_without_a_good_teacher_says_so_before_training(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    cache_dir = shared_dir / "teachers"
    cache_dir.mkdir()
    if state == "corrupt":
        entry = load_teacher(*teacher_setup(shared_dir)).path.parent
        (entry / MANIFEST).unlink()
    monkeypatch.setattr(teachers, "train_teacher", lambda *args, **kwargs: pytest.fail("must fail before training"))
    setup = teacher_setup(shared_dir)
    with unwritable(cache_dir), pytest.raises(StorageError) as error:
        load_teacher(*setup)
    assert str(error.value) == (
        f"paths.teacher_dir={cache_dir} cannot be written (Permission denied) and does not hold a complete teacher "
        f"{fingerprint(teacher_config(setup[0]))} ({setup[0].teacher.recipe}): make it writable, or set paths.teacher_dir to a writable directory")


# -- real file systems: a full tmpfs, a read-only bind mount (root with mount namespaces only) -----------------

def _mount_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _mount_namespaces(), reason="needs root and mount namespaces (unshare -m)")


LEFT_BEHIND = """
import json, sys
from pathlib import Path
from kdlab.cache import CorruptEntry, read_entry
outputs = Path(sys.argv[1])
results = []
for path in outputs.rglob("*results.json*"):
    try:
        results.append(json.loads(path.read_text())["status"])
    except ValueError:
        results.append("partial: " + str(path))
entries = {}
for path in (outputs / "teachers").glob("*"):
    try:
        entries[path.name] = "complete" if path.is_dir() and read_entry(path) is not None else "other"
    except CorruptEntry as error:
        entries[path.name] = "corrupt: " + str(error)
print("LEFT " + json.dumps({"results": results, "teachers": entries}))
"""


def kdlab_on_tmpfs(size: str, outputs: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`kdlab train ARGS` with its outputs on a tmpfs of `size`, in a mount namespace of its own (the tmpfs
    goes with it), and what it left there: the status of every results.json, the state of every cache entry."""
    env = {**os.environ, "KDLAB_OUTPUTS": str(outputs), "PYTHONUNBUFFERED": "1"}
    outputs.mkdir(parents=True)
    script = f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && "$@"; rc=$?; "$0" -c "$LEFT_BEHIND" "$KDLAB_OUTPUTS"; exit $rc'
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, sys.executable, str(outputs), *KDLAB, "train", *args],
                            env={**env, "LEFT_BEHIND": LEFT_BEHIND}, cwd=outputs.parent, capture_output=True, text=True,
                            timeout=600)
    (left,) = [line.removeprefix("LEFT ") for line in result.stdout.splitlines() if line.startswith("LEFT ")]
    return result, json.loads(left)


@pytest.mark.slow
@needs_mounts
def test_kdlab_train_on_a_full_disk_names_the_file_and_leaves_no_partial_file(outputs: Path) -> None:
    """64 KiB: the teacher's weights (84 KB) do not fit."""
    result, left = kdlab_on_tmpfs("64k", outputs, *FAST, "trainer.max_epochs=1")
    assert result.returncode != 0
    entry = outputs / "teachers" / fingerprint(teacher_config(compose_train([*FAST], outputs / "run")))
    assert f"kdlab: cannot write {entry / WEIGHTS_FILE}: No space left on device; " in result.stderr, result.stderr[-3000:]
    assert "weights_only" not in result.stderr
    assert all(status in ("failed", "completed") for status in left["results"]), left
    assert all(state == "complete" for state in left["teachers"].values()), left  # no half-written entry, no staging
