"""One GPU per job when one machine runs several jobs of a multirun at once.

Hydra's joblib launcher runs the jobs in a pool of worker processes but gives them no devices.
`OneGpuPerJob` (a Hydra callback, `hardware=local_gpus`) does: the first job a worker process
runs claims a GPU that no other worker holds — an exclusive lock on `<sweep dir>/.gpus/gpu<id>.lock`,
held until the process exits — and from then on the process sees only that GPU
(`CUDA_VISIBLE_DEVICES=<id>`), so every job it runs trains there. The claim is per process and
not per job because CUDA reads `CUDA_VISIBLE_DEVICES` once, when a process first uses it, and
joblib reuses its workers; the locks guarantee that no two workers ever share a GPU, whatever
order the jobs finish in (a fixed `job.num % n_gpus` mapping cannot: a worker freed early would
take the next job onto a GPU that a slow job still uses).
"""

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

_claimed: tuple[str, FileLock] | None = None  # this process's GPU and the lock that reserves it


def visible_gpus() -> list[str]:
    """The GPU ids this machine offers: `CUDA_VISIBLE_DEVICES` if set, else every GPU `nvidia-smi` lists."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [gpu for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                 capture_output=True, text=True, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError):
        return []
    return listing.split()


def claim_gpu(lock_dir: Path, gpus: Sequence[str]) -> str:
    """Reserve for this process one of `gpus` that no other process holds and return its id.

    Later calls in the same process return the same GPU. Raises RuntimeError when every GPU is
    held by another process (more workers than GPUs).
    """
    global _claimed
    if _claimed is None:
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
            raise RuntimeError("CUDA is already initialised in this process: it can no longer be given one GPU")
        lock_dir.mkdir(parents=True, exist_ok=True)
        for gpu in gpus:
            lock = FileLock(str(lock_dir / f"gpu{gpu}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            _claimed = (gpu, lock)
            break
        else:
            raise RuntimeError(f"all {len(gpus)} GPUs ({', '.join(gpus)}) are held by other workers of this sweep")
    return _claimed[0]


class OneGpuPerJob(Callback):
    """Hydra callback: each job sees one GPU of `gpus` that no concurrently running job uses.

    `gpus`: GPU ids (`[0, 1, 2, 3]` or `"0,1,2,3"`); None takes `visible_gpus()` of the launching shell.
    The launcher must run at most `len(gpus)` jobs at once, each in its own process.
    """

    def __init__(self, gpus: Sequence[int | str] | str | None = None) -> None:
        if isinstance(gpus, str):
            gpus = gpus.split(",")
        self.gpus = [str(gpu).strip() for gpu in gpus] if gpus is not None else None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.gpus is None:
            self.gpus = visible_gpus()  # decided once, in the launching process, and sent to the workers
        check_launcher(config.hydra.launcher, self.gpus)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.gpus is None:  # a single run (no multirun) with this callback configured
            self.gpus = visible_gpus()
        gpu = claim_gpu(Path(config.hydra.sweep.dir) / ".gpus", self.gpus)
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("Job %s runs on GPU %s (process %d)", config.hydra.job.get("num", 0), gpu, os.getpid())


def check_launcher(launcher: DictConfig, gpus: Sequence[str]) -> None:
    """ValueError unless `launcher` runs at most one job per GPU at once, each in its own process."""
    if not gpus:
        raise ValueError("hardware=local_gpus found no GPU: set CUDA_VISIBLE_DEVICES or hydra.callbacks.one_gpu_per_job.gpus")
    n_jobs = launcher.get("n_jobs", 1)
    if not 0 < n_jobs <= len(gpus):
        raise ValueError(f"hydra.launcher.n_jobs={n_jobs} jobs at once, but {len(gpus)} GPUs ({','.join(gpus)}): "
                         f"set hydra.launcher.n_jobs to a number from 1 to {len(gpus)}")
    if launcher.get("backend") == "threading" or launcher.get("prefer") == "threads" or launcher.get("require") == "sharedmem":
        raise ValueError("one GPU per job needs one process per job: use the joblib launcher's process backend (loky)")
