"""The CLI in a new process, forked from a server that has imported torch and Lightning once.

A `kdlab train` spends about 7 of its 10 seconds on 2 cores importing torch, Lightning and what
Lightning imports (torchmetrics, transformers, torchvision); the suite runs it about a hundred
times. Here multiprocessing's fork server imports those libraries once, and each command is a
process forked from it: its own pid, environment, working directory, stdout and stderr, exit
status and signals, with kdlab itself imported afresh from the tree. The console script runs as
`__main__`, so Lightning's DDP launcher re-runs it as a script, as it does for users.
"""

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

_SERVER = multiprocessing.get_context("forkserver")
_SERVER.set_forkserver_preload(["torch", "lightning.pytorch", "hydra", "omegaconf"])


class CliProcess:
    """One started command; `wait` gives what `subprocess.run(..., capture_output=True, text=True)` gives."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], cwd: Path, umask: int | None = None) -> None:
        self.command = list(command)
        self._folder = tempfile.TemporaryDirectory()
        self._out, self._err = Path(self._folder.name) / "stdout", Path(self._folder.name) / "stderr"
        self._process = _SERVER.Process(target=_run_script, args=(self.command, dict(env), str(cwd), str(self._out),
                                                                  str(self._err), umask))
        self._process.start()

    def wait(self, timeout: float = 600) -> subprocess.CompletedProcess:
        """The exit status (negative: the signal that ended it) and both outputs; `TimeoutExpired` after `timeout`."""
        self._process.join(timeout)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
            raise subprocess.TimeoutExpired(self.command, timeout, self._out.read_text(), self._err.read_text())
        result = subprocess.CompletedProcess(self.command, self._process.exitcode, self._out.read_text(), self._err.read_text())
        self._folder.cleanup()
        return result


def run_cli(command: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)` for a
    console script, forked from the server."""
    return CliProcess(command, env, cwd).wait(timeout)


def _run_script(command: list[str], env: dict[str, str], cwd: str, out: str, err: str, umask: int | None) -> None:
    """In the forked process: the environment (`PYTHONPATH`'s folders first on the path, a `sitecustomize` in
    them run, as at the interpreter's start-up), directory, umask and output files, then the script, ending as
    the interpreter ends (SystemExit's code; a message is printed and exits 1; an exception's traceback exits 1)."""
    os.environ.clear()
    os.environ.update(env)
    added = [folder for folder in env.get("PYTHONPATH", "").split(os.pathsep) if folder and folder not in sys.path]
    sys.path[:0] = added
    os.chdir(cwd)
    if umask is not None:
        os.umask(umask)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own streams
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = command
    status: object = 0
    try:
        site_files = [Path(folder) / "sitecustomize.py" for folder in added if (Path(folder) / "sitecustomize.py").is_file()]
        if site_files:
            runpy.run_path(str(site_files[0]), run_name="sitecustomize")
        runpy.run_path(command[0], run_name="__main__")
    except SystemExit as exit_:
        status = exit_.code
    except BaseException:  # noqa: BLE001 - printed, exit status 1, as the interpreter does
        traceback.print_exc()
        status = 1
    threading._shutdown()  # the interpreter's own exit: non-daemon threads and their exit hooks (executors), then atexit
    atexit._run_exitfuncs()
    if status is not None and not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)
