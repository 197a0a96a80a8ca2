"""A fault injector for the tests: kills this Python process with SIGKILL at a chosen point of a
Lightning run, or makes one training batch NaN.

Loaded by Python at start-up (`sitecustomize`) when this directory is on PYTHONPATH; it acts only when
`KDLAB_KILL_AT` names a point, and changes nothing else. The process gets a real SIGKILL from the
kernel: no `finally`, `atexit` or signal handler runs, as when a node is lost. Points:

- `fit_batch:E:B` — before training batch B of epoch E of the run's own fit (a trainer with checkpointing);
- `teacher_batch:E:B` — the same in the teacher's training (the trainer without checkpointing);
- `epoch_start:E` — when training epoch E starts, after epoch E-1 ended and was checkpointed;
- `checkpoint:N` — while writing `last.ckpt` for the N-th time, once its bytes are written and before
  they replace the previous checkpoint;
- `test_batch:B` — before test batch B of the run's own test;
- `nan_batch:E:B` — no kill: the inputs of training batch B of epoch E are set to NaN (a NaN loss follows);

each optionally followed by `@K`: at the K-th time the point is reached in this process (default 1;
a multirun's jobs run in one process).
"""

import os
import signal

_SPEC = os.environ.get("KDLAB_KILL_AT")


def _install(spec: str) -> None:
    point, _, occurrence = spec.partition("@")
    kind, *numbers = point.split(":")
    wanted = tuple(int(n) for n in numbers)
    times = {"left": int(occurrence or 1)}

    def due() -> bool:
        times["left"] -= 1
        return times["left"] == 0

    def reached() -> None:
        if due():
            os.kill(os.getpid(), signal.SIGKILL)

    if kind == "checkpoint":
        import kdlab.results

        original_replace = kdlab.results.os.replace
        saves = {"n": 0}

        def replace(source, target, *args, **kwargs):
            if os.path.basename(str(target)) == "last.ckpt":
                saves["n"] += 1
                if saves["n"] == wanted[0]:
                    reached()
            return original_replace(source, target, *args, **kwargs)

        kdlab.results.os = _OsWithReplace(replace)
        return

    from lightning.pytorch.trainer import call

    original = call._call_callback_hooks

    def hooks(trainer, hook_name, *args, **kwargs):
        own_fit = trainer.checkpoint_callback is not None
        if kind == "fit_batch" and hook_name == "on_train_batch_start" and own_fit:
            if (trainer.current_epoch, args[1]) == wanted:
                reached()
        elif kind == "teacher_batch" and hook_name == "on_train_batch_start" and not own_fit:
            if (trainer.current_epoch, args[1]) == wanted:
                reached()
        elif kind == "epoch_start" and hook_name == "on_train_epoch_start" and own_fit:
            if (trainer.current_epoch,) == wanted:
                reached()
        elif kind == "test_batch" and hook_name == "on_test_batch_start" and own_fit:
            if (args[1],) == wanted:
                reached()
        elif kind == "nan_batch" and hook_name == "on_train_batch_start" and own_fit:
            if (trainer.current_epoch, args[1]) == wanted and due():
                args[0]["input"].fill_(float("nan"))
        return original(trainer, hook_name, *args, **kwargs)

    call._call_callback_hooks = hooks


class _OsWithReplace:
    """The `os` module with `replace` swapped (for `kdlab.results` only)."""

    def __init__(self, replace) -> None:
        self.replace = replace

    def __getattr__(self, name: str):
        return getattr(os, name)


if _SPEC:
    _install(_SPEC)
