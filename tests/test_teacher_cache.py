"""The teacher cache under faults: corrupt entries, dead and foreign lock holders, waiting jobs, 8 jobs at once.

Lock holders are real processes (killed with SIGKILL where they must die holding the lock); the
teacher itself is a digits CNN trained for one or two epochs.
"""

import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from cli_process import CliProcess
from conftest import FAST, KDLAB
from hydra.utils import instantiate
from test_configs import compose_train

from kdlab import cache
from kdlab.cache import MANIFEST, CorruptEntry, load_or_build, read_entry
from kdlab.checkpoints import check_checkpoint, read_checkpoint
from kdlab.errors import DataError
from kdlab.teachers import WEIGHTS_FILE, load_teacher, storable

FILES = {"weights.bin": bytes(range(256)) * 64, "metrics.json": b'{"acc": 0.9}\n'}


def build_files(log_dir: Path) -> dict[str, bytes]:
    (log_dir / "log.txt").write_text("trained\n")
    return dict(FILES)


def build(root: Path, key: str = "k", builder=build_files) -> cache.Entry:
    return load_or_build(root, key, builder, what=f"thing {key}", setting="paths.thing_dir")


# -- corrupt entries -----------------------------------------------------------------------------------------

def _truncate(entry: Path) -> None:
    data = (entry / "weights.bin").read_bytes()
    (entry / "weights.bin").write_bytes(data[: len(data) // 2])


def _flip_one_bit(entry: Path) -> None:
    data = bytearray((entry / "weights.bin").read_bytes())
    data[1000] ^= 0x01
    (entry / "weights.bin").write_bytes(bytes(data))


def _garbage(entry: Path) -> None:
    (entry / "weights.bin").write_bytes(os.urandom(4096))


def _no_manifest(entry: Path) -> None:  # also what an entry of an older kdlab (teacher.pt, no manifest) looks like
    (entry / MANIFEST).unlink()


def _bad_manifest(entry: Path) -> None:
    (entry / MANIFEST).write_text('{"files": {"weights.bin": ')


def _missing_file(entry: Path) -> None:
    (entry / "metrics.json").unlink()


CORRUPTIONS = [_truncate, _flip_one_bit, _garbage, _no_manifest, _bad_manifest, _missing_file]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_a_corrupt_entry_is_detected_logged_and_rebuilt(tmp_path: Path, corrupt, caplog: pytest.LogCaptureFixture) -> None:
    first = build(tmp_path)
    assert first.built and first.files == FILES
    corrupt(first.path)
    with pytest.raises(CorruptEntry):
        read_entry(first.path)
    caplog.set_level(logging.WARNING, logger="kdlab.cache")
    again = build(tmp_path)
    assert again.built and again.files == FILES and read_entry(again.path) == FILES
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"The cached thing k in {first.path} is corrupt: ") and warning.endswith("building it again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no lock, holder record or staging directory left


def test_an_entry_is_read_back_exactly_and_not_rebuilt(tmp_path: Path) -> None:
    built = build(tmp_path)
    manifest = json.loads((built.path / MANIFEST).read_text())
    assert manifest["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    assert (built.path / "log.txt").read_text() == "trained\n"  # the builder's logs move in with the entry
    again = build(tmp_path, builder=lambda _: pytest.fail("a complete entry must not be rebuilt"))
    assert not again.built and again.files == FILES


def test_a_failed_build_leaves_no_entry_and_no_lock(tmp_path: Path) -> None:
    def fails(log_dir: Path) -> dict[str, bytes]:
        (log_dir / "half.log").write_text("...")
        raise RuntimeError("loss is NaN")

    with pytest.raises(RuntimeError, match="loss is NaN"):
        build(tmp_path, builder=fails)
    assert list(tmp_path.iterdir()) == []
    assert build(tmp_path).built


def test_an_entry_another_job_stored_meanwhile_is_used_instead_of_this_ones(tmp_path: Path) -> None:
    """A holder whose lease was taken over (it stalled past the lease) finds the entry stored when it is
    done: it uses that copy, as every other job does, and discards its own."""
    theirs = build(tmp_path / "elsewhere", builder=lambda _: {"weights.bin": b"theirs"})

    def overtaken(log_dir: Path) -> dict[str, bytes]:
        shutil.copytree(theirs.path, tmp_path / "cache" / "k")
        return {"weights.bin": b"ours"}

    entry = build(tmp_path / "cache", builder=overtaken)
    assert not entry.built and entry.files == {"weights.bin": b"theirs"}
    assert read_entry(tmp_path / "cache" / "k") == {"weights.bin": b"theirs"}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["k"]


# -- lock holders: alive, dead on this host, gone on another host -------------------------------------------

HOLDER = """
import os, socket, sys, time
from pathlib import Path
if {host!r}:
    socket.gethostname = lambda: {host!r}
from kdlab import cache
cache.LEASE_S = {lease}

def builder(log_dir):
    Path({ready!r}).write_text("building")
    if {die}:
        os.kill(os.getpid(), 9)  # a job lost while it trains: SIGKILL, nothing cleaned up
    time.sleep({seconds})
    return {{"weights.bin": b"from the holder"}}

cache.load_or_build(Path({root!r}), "k", builder, what="thing k", setting="paths.thing_dir")
"""


def start_holder(tmp_path: Path, root: Path, die: bool = False, host: str = "", lease: float = cache.LEASE_S,
                 seconds: float = 0) -> subprocess.Popen:
    """A process that takes the lock of entry `k` under `root` and builds it (or dies building it)."""
    ready = tmp_path / "holder-ready"
    script = HOLDER.format(host=host, lease=lease, ready=str(ready), die=die, seconds=seconds, root=str(root))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert holder.poll() is None or die, "the holder process ended before it took the lock"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return holder


def test_a_dead_holders_lock_on_this_host_is_broken_at_once(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    holder = start_holder(tmp_path, root, die=True)
    assert holder.wait(timeout=60) == -signal.SIGKILL
    left = sorted(p.name for p in root.iterdir())
    assert "k.lease" in left and "k.holder.json" in left and any(n.startswith(".k.building-") for n in left), left
    started = time.monotonic()
    entry = build(root)
    assert entry.built and entry.files == FILES
    assert time.monotonic() - started < 10  # not the lease (180 s): a dead pid on this host is stale at once
    assert sorted(p.name for p in root.iterdir()) == ["k"]


def test_a_lock_of_a_holder_on_another_host_is_broken_when_its_lease_runs_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another host's pid cannot be probed: its lock is taken over once the lease goes unrefreshed."""
    monkeypatch.setattr(cache, "LEASE_S", 3.0)
    monkeypatch.setattr(cache, "WAIT_MESSAGE_S", 0.5)
    root = tmp_path / "cache"
    holder = start_holder(tmp_path, root, die=True, host="gpu-node-17", lease=3.0)
    holder.wait(timeout=60)
    caplog.set_level(logging.INFO, logger="kdlab.cache")
    started = time.monotonic()
    entry = build(root)
    assert entry.built and time.monotonic() - started >= 3.0
    waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Waiting for thing k")]
    assert waiting and "on gpu-node-17 has been building it since" in waiting[0], waiting


def test_waiting_jobs_say_who_builds_and_since_when_then_take_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache, "WAIT_MESSAGE_S", 1.0)
    root = tmp_path / "cache"
    holder = start_holder(tmp_path, root, seconds=4)
    caplog.set_level(logging.INFO, logger="kdlab.cache")
    entry = build(root, builder=lambda _: pytest.fail("the waiting job must not build it too"))
    assert holder.wait(timeout=60) == 0
    assert not entry.built and entry.files == {"weights.bin": b"from the holder"}
    waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Waiting for thing k")]
    assert 2 <= len(waiting) <= 6, waiting  # about one a second here (one a minute by default)
    assert f"pid {holder.pid} on " in waiting[0] and " has been building it since " in waiting[0]
    assert str(root / "k.lease") in waiting[0]


# -- the teacher: corrupt entries retrained to the same weights, corrupt checkpoints named -------------------

def teacher_setup(tmp_path: Path, *overrides: str):
    cfg = compose_train(["teacher.max_epochs=1", "logger=none", f"paths.teacher_dir={tmp_path / 'teachers'}", *overrides],
                        tmp_path / "run")
    torch.manual_seed(cfg.seed)  # as `kdlab.run` seeds before it builds the models
    return cfg, instantiate(cfg.dataset.datamodule), instantiate(cfg.model.teacher)


def test_a_truncated_teacher_entry_is_retrained_to_the_same_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg, datamodule, model = teacher_setup(tmp_path)
    first = load_teacher(cfg, datamodule, model)
    assert first.source == "trained" and first.path.name == WEIGHTS_FILE
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) // 3])  # a copy cut short, a disk that filled up

    caplog.set_level(logging.WARNING, logger="kdlab.cache")
    cfg, datamodule, model = teacher_setup(tmp_path)
    again = load_teacher(cfg, datamodule, model)
    assert again.source == "trained" and again.metrics == first.metrics
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in weights.items())
    assert f"{WEIGHTS_FILE} does not match its SHA-256" in caplog.text

    cfg, datamodule, model = teacher_setup(tmp_path)
    cached = load_teacher(cfg, datamodule, model)
    assert cached.source == "cache" and all(torch.equal(cached.model.state_dict()[k], v) for k, v in weights.items())


def test_tied_weights_are_stored_and_load_back() -> None:
    """safetensors refuses two names for one tensor (an LM head tied to its embedding): stored as copies."""
    def tied() -> torch.nn.Module:
        model = torch.nn.Sequential(torch.nn.Embedding(7, 4), torch.nn.Linear(4, 7, bias=False))
        model[1].weight = model[0].weight
        return model

    model, copy = tied(), tied()
    state = safetensors.torch.load(safetensors.torch.save(storable(model.state_dict())))
    copy.load_state_dict(state)
    assert torch.equal(copy[0].weight, model[0].weight) and copy[1].weight is copy[0].weight


def _checkpoints(tmp_path: Path) -> dict[str, Path]:
    model = instantiate(teacher_setup(tmp_path)[0].model.teacher)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, good)
    data = good.read_bytes()
    weight = next(v for v in model.state_dict().values() if v.numel() >= 16)
    flipped = bytearray(data)  # one bit flipped inside a tensor's bytes, which torch.load reads without a check
    flipped[data.index(weight.numpy().tobytes()[:64]) + 8] ^= 0x01
    paths = {"good": good}
    for name, content in {"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b"",
                          "flipped": bytes(flipped)}.items():
        paths[name] = tmp_path / f"{name}.ckpt"
        paths[name].write_bytes(content)
    paths["pickled"] = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "numpy": np.arange(3)}, paths["pickled"])
    return paths


def test_a_corrupt_teacher_checkpoint_names_the_file_and_says_to_replace_it(tmp_path: Path) -> None:
    paths = _checkpoints(tmp_path)
    assert check_checkpoint(paths["good"]) == paths["good"]
    for name in ("truncated", "garbage", "empty", "flipped"):
        cfg, datamodule, model = teacher_setup(tmp_path, f"teacher.ckpt_path={paths[name]}")
        with pytest.raises(DataError) as error:
            load_teacher(cfg, datamodule, model)
        message = str(error.value)
        assert message.startswith(f"teacher.ckpt_path={paths[name]} is "), message
        assert message.endswith("delete or replace it") and "weights_only" not in message and "\n" not in message
    assert "fails its CRC-32 check" in str(pytest.raises(DataError, read_checkpoint, paths["flipped"]).value)
    with pytest.raises(DataError, match=r"pickled.ckpt holds Python objects other than tensors") as error:
        read_checkpoint(paths["pickled"], setting="ckpt_path")
    assert isinstance(error.value.__cause__, pickle.UnpicklingError)
    with pytest.raises(DataError, match=r"^teacher.ckpt_path=.*missing.ckpt does not exist$"):
        load_teacher(*teacher_setup(tmp_path, f"teacher.ckpt_path={tmp_path / 'missing.ckpt'}"))
    cfg, datamodule, model = teacher_setup(tmp_path, f"teacher.ckpt_path={paths['good']}")
    assert load_teacher(cfg, datamodule, model).source == "checkpoint"


# -- 8 jobs at once ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_eight_jobs_asking_for_a_missing_teacher_train_it_once_and_agree(outputs: Path) -> None:
    """8 `kdlab train` processes started together need the same teacher: one trains it, seven wait and
    load it, and all eight end with the same metrics. They run with umask 002, as on a group-shared disk."""
    env = {**os.environ, "KDLAB_OUTPUTS": str(outputs)}
    args = [*KDLAB, "train", *FAST, "trainer.max_epochs=1"]
    outputs.mkdir(parents=True)
    jobs = [CliProcess(args, env=env, cwd=outputs.parent, umask=0o002) for _ in range(8)]
    for job in jobs:
        result = job.wait(timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
    results = [json.loads(p.read_text()) for p in sorted((outputs / "runs").rglob("results.json"))]
    assert len(results) == 8
    assert sorted(r["teacher"]["source"] for r in results) == ["cache"] * 7 + ["trained"]
    assert all(r["metrics"] == results[0]["metrics"] for r in results)
    (entry,) = (outputs / "teachers").iterdir()  # one entry, no lock or staging directory left behind
    assert read_entry(entry) is not None
    for path in [entry, *entry.iterdir(), *(outputs / "runs").rglob("results.json")]:
        assert path.stat().st_mode & 0o777 == (0o775 if path.is_dir() else 0o664), path
