"""Start-up time of the CLI against `python -c "import torch"`, each command a fresh process, all in one run.

    python benchmarks/bench_startup.py [--repeats 7] [--out benchmarks/results/startup_cpu.json]

Wall-clock seconds from process start to exit, median of `--repeats` runs interleaved round-robin
(so a change in the machine's load touches every command alike), with stdout discarded. The
commands that answer without training (`--help`, `list`, `--cfg job`) should not import Lightning.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

KDLAB = str(Path(sys.executable).parent / "kdlab")
COMMANDS = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "kdlab --help": [KDLAB, "--help"],
    "kdlab list": [KDLAB, "list"],
    "kdlab train --cfg job": [KDLAB, "train", "--cfg", "job"],
    "kdlab train --help": [KDLAB, "train", "--help"],
    "python -c 'import lightning.pytorch'": [sys.executable, "-c", "import lightning.pytorch"],
}


def seconds(command: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env={**os.environ, "KDLAB_OUTPUTS": os.path.join(cwd, "outputs")})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "startup_cpu.json")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:
        for name, command in COMMANDS.items():  # warm the file cache once
            seconds(command, cwd)
        for _ in range(args.repeats):
            for name, command in COMMANDS.items():
                times[name].append(seconds(command, cwd))
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_s = medians["python -c 'import torch'"]
    for name, median in medians.items():
        print(f"{name:40s} {median:6.2f} s  {median / torch_s:5.2f}x import torch")
    record = {
        "median_seconds": {name: round(value, 3) for name, value in medians.items()},
        "ratio_to_import_torch": {name: round(value / torch_s, 3) for name, value in medians.items()},
        "seconds": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
