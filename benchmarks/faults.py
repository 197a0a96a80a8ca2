"""SIGKILL at random moments, resume, compare: the figures of docs/reliability.md.

One uninterrupted reference run, then the same run killed (SIGKILL to its process group, as when a
node is lost) at `--kills` random moments, each time started again with `resume=true` (without it
while no run directory exists yet, as a user would), and finally resumed to the end. Reported: where
each kill landed (from what it left on disk), whether the run stayed in one directory, and whether its
metrics and CSV log equal the reference's. Moments are drawn uniformly in [5%, 95%] of how long the
process would take: the reference's duration while the teacher is not cached yet, that of a second
reference run that finds it cached afterwards (`--seed` for the draw).

    PYTHONPATH=. python benchmarks/faults.py --kills 10 --seed 1 --out benchmarks/results/faults_seed1.json
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

KDLAB = [str(Path(sys.executable).parent / "kdlab")]
RUN = ["trainer.max_epochs=5", "teacher.max_epochs=2"]


def start(args: list[str], outputs: Path) -> subprocess.Popen:
    env = {**os.environ, "KDLAB_OUTPUTS": str(outputs), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen([*KDLAB, "train", *args], env=env, cwd=outputs.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def where(outputs: Path) -> str:
    """Where the run was when it was killed, from what it left on disk."""
    runs = list((outputs / "runs").glob("*/*"))
    if not runs:
        return "before its run directory existed"
    last = runs[0] / "checkpoints" / "last.ckpt"
    if (runs[0] / "results.json").exists():
        return "after it completed"
    if not last.exists():
        if list((outputs / "teachers").glob("*/manifest.json")):
            return "after its teacher was cached, before its first checkpoint"
        return "while setting up or training its teacher"
    epoch = torch.load(last, weights_only=False)["epoch"]
    return f"after epoch {epoch}'s checkpoint" + (" (testing)" if epoch == 4 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    draw = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="kdlab-faults-"))

    durations = []
    for _ in range(2):  # the second finds the teacher cached
        began = time.time()
        assert start(RUN, root / "reference").wait() == 0, "the reference run failed"
        durations.append(time.time() - began)
    reference_dir = min((root / "reference" / "runs").glob("*/*"))

    outputs, kills = root / "faulty", []
    for _ in range(args.kills):
        resuming = bool(list((outputs / "runs").glob("*/*")))
        job = start([*RUN, "resume=true"] if resuming else RUN, outputs)
        cached = bool(list((outputs / "teachers").glob("*/manifest.json")))
        delay = draw.uniform(0.05, 0.95) * durations[cached]
        time.sleep(delay)
        finished = job.poll() is not None
        if not finished:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        kills.append({"after_s": round(delay, 1), "killed": not finished, "where": where(outputs), "resumed": resuming})
    final = start([*RUN, "resume=true"], outputs)
    final.wait()

    run_dirs = list((outputs / "runs").glob("*/*"))
    completed = [d for d in run_dirs if (d / "results.json").exists()]
    same = bool(completed) and all(
        json.loads((d / "results.json").read_text())["metrics"] == json.loads((reference_dir / "results.json").read_text())["metrics"]
        for d in completed
    )
    same_csv = bool(completed) and all((d / "csv" / "metrics.csv").read_text() == (reference_dir / "csv" / "metrics.csv").read_text()
                                      for d in completed)
    report = {"command": "kdlab train " + " ".join(RUN), "reference_s": [round(d, 1) for d in durations], "kills": kills,
              "run_directories": len(run_dirs), "identical_metrics": same, "identical_csv": same_csv,
              "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
