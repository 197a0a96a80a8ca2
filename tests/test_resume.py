"""Kill -9 anywhere, resume, same result: real `kdlab train` processes killed with SIGKILL (and one made
NaN) at chosen points, resumed with `resume=true`, compared exactly with the uninterrupted runs.

The faults come from `tests/killpoint/sitecustomize.py`, which kills the process from inside at a
precise point (a real SIGKILL: nothing of the process runs after it). The uninterrupted reference is
one multirun (temperatures 2 and 4) that both tests compare with.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from cli_process import run_cli
from conftest import KDLAB, kdlab

pytestmark = pytest.mark.slow

KILLPOINT = Path(__file__).parent / "killpoint"
RUN = ["trainer.max_epochs=5", "teacher.max_epochs=2"]
SWEEP = ["-m", "objective.temperature=2.0,4.0", *RUN, "logger=none"]


def faulty(args: list[str], fault: str, outputs: Path) -> subprocess.CompletedProcess:
    """`kdlab train ARGS` with the fault `fault` (see tests/killpoint/sitecustomize.py)."""
    env = {**os.environ, "KDLAB_OUTPUTS": str(outputs), "KDLAB_KILL_AT": fault, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(KILLPOINT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return run_cli([*KDLAB, "train", *args], env=env, cwd=outputs.parent)


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def metrics_csv(run_dir: Path) -> str:
    return (run_dir / "csv" / "metrics.csv").read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """The uninterrupted runs, by temperature."""
    outputs = tmp_path_factory.mktemp("reference") / "outputs"
    kdlab("train", *SWEEP, outputs=outputs)
    return {record(d)["config"]["objective"]["temperature"]: d for d in (outputs / "multirun").glob("*/*") if (d / "results.json").is_file()}


def test_a_run_killed_anywhere_resumes_in_its_own_directory_to_the_same_metrics(reference: dict[float, Path], outputs: Path) -> None:
    """One run, killed during teacher training, mid-epoch, between epochs, while writing its checkpoint,
    stopped by a NaN, killed while testing, resumed after each: it stays in its directory and W&B run
    and ends with every metric and every CSV row of the uninterrupted run."""
    killed = faulty(RUN, "teacher_batch:1:3", outputs)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run_dir,) = (outputs / "runs").glob("*/*")
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # killed before the student's first epoch

    last = run_dir / "checkpoints" / "last.ckpt"
    for fault, epoch_after in (("fit_batch:1:5", 0), ("epoch_start:3", 2), ("checkpoint:1", 2), ("nan_batch:4:2", 3), ("test_batch:2", 4)):
        result = faulty([*RUN, "resume=true"], fault, outputs)
        assert list((outputs / "runs").glob("*/*")) == [run_dir], f"{fault}: resume=true made a new run directory"
        if fault.startswith("nan"):
            assert result.returncode == 1, result.stderr[-2000:]
            assert result.stderr.strip().splitlines()[-1].startswith("kdlab: non-finite training loss nan at global step ")
            assert "Traceback" not in result.stderr
            assert record(run_dir)["status"] == "failed" and "NonFiniteLossError" in record(run_dir)["error"]
        else:
            assert result.returncode == -signal.SIGKILL, f"{fault}: {result.stderr[-2000:]}"
        assert torch.load(last, weights_only=False)["epoch"] == epoch_after, fault  # the last whole epoch's checkpoint
        if fault.startswith("checkpoint"):
            assert list(last.parent.glob(".last.ckpt.*.tmp")), "the save was not cut short"

    kdlab("train", *RUN, "resume=true", outputs=outputs)
    assert not list(last.parent.glob(".*.tmp"))  # the cut-short save's temporary file is gone
    resumed, uninterrupted = record(run_dir), record(reference[4.0])
    assert resumed["status"] == "completed" and resumed["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["metrics"] == uninterrupted["metrics"]  # every metric, bit for bit
    assert resumed["teacher"]["metrics"] == uninterrupted["teacher"]["metrics"] and resumed["epochs"] == uninterrupted["epochs"] == 5
    assert metrics_csv(run_dir) == metrics_csv(reference[4.0])  # every step's logged values, every epoch once
    wandb_runs = {path.name.rsplit("-", 1)[-1] for path in (run_dir / "wandb").glob("offline-run-*")}
    assert len(wandb_runs) == 1, wandb_runs  # one W&B run id for all 7 processes


def test_a_killed_multirun_resumes_only_its_unfinished_jobs(reference: dict[float, Path], outputs: Path) -> None:
    """The second job is killed in its third epoch; `-m ... resume=true` leaves the finished first job as
    it is (its recorded metrics go to the sweeper), continues the second in its own directory, and both
    end as the uninterrupted multirun."""
    killed = faulty(SWEEP, "fit_batch:2:1@2", outputs)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (sweep,) = (outputs / "multirun").glob("*")
    first, second = sorted(d for d in sweep.iterdir() if d.is_dir())
    finished = (first / "results.json").read_bytes(), (first / "results.json").stat().st_mtime_ns
    assert not (second / "results.json").exists()

    result = kdlab("train", *SWEEP, "resume=true", outputs=outputs)
    assert list((outputs / "multirun").glob("*")) == [sweep] and sorted(d for d in sweep.iterdir() if d.is_dir()) == [first, second]
    assert ((first / "results.json").read_bytes(), (first / "results.json").stat().st_mtime_ns) == finished
    assert "already completed" in result.stdout + result.stderr
    for job, temperature in ((first, 2.0), (second, 4.0)):
        assert record(job)["metrics"] == record(reference[temperature])["metrics"], job.name
        assert metrics_csv(job) == metrics_csv(reference[temperature]), job.name
    assert record(second)["resumed_from"] == str(second / "checkpoints" / "last.ckpt")


def test_resume_with_nothing_to_resume_says_so_before_any_work(outputs: Path) -> None:
    result = kdlab("train", "+method=scratch", "resume=true", "logger=none", outputs=outputs, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"kdlab: resume=true: no run of this config was started under {outputs / 'runs' / 'scratch-none-digits_cnn-digits-s0'}; "
        "drop resume=true to start it, or name a run directory with hydra.run.dir=DIR"
    ]
    assert not (outputs / "runs").exists()


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # "cuda": torch.manual_seed's branch (it seeds the CPU generator too)
def test_each_training_batch_draws_from_generators_seeded_by_its_position_alone(device):
    import random
    from types import SimpleNamespace

    import numpy as np

    from kdlab.fingerprint import derived_seed
    from kdlab.resumable import ResumableRun

    callback = ResumableRun(seed=3)
    trainer = SimpleNamespace(global_rank=1, current_epoch=2, strategy=SimpleNamespace(root_device=torch.device(device)))

    def draws_of_batch(batch_idx: int) -> tuple:
        torch.rand(7), np.random.rand(), random.random()  # whatever the process drew before
        callback.on_train_batch_start(trainer, None, None, batch_idx)
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    seed = derived_seed(3, "train", 2, 5, 1)  # (run seed, "train", epoch, batch, rank)
    expected = (torch.rand(3, generator=torch.Generator().manual_seed(seed)).tolist(),
                np.random.RandomState(seed).rand(3).tolist(), random.Random(seed).random())
    assert draws_of_batch(5) == expected
    assert draws_of_batch(5) == expected  # the same batch again (a resumed run): the same draws
    assert draws_of_batch(6)[0] != expected[0]
