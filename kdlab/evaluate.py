"""`kdlab eval RUN_DIR [split=test|val] [OVERRIDES]`: a finished run's model evaluated again, recorded in `eval.json`.

The run is opened with the overrides (`kdlab.saved_run`: `dataset=NAME`, `dataset.datamodule.KEY=V`,
`trainer.limit_test_batches=N`, ...; validated, and checked to build the run's models, before
anything is loaded), rebuilt with its weights, and evaluated by Lightning's test loop (`split=test`,
the default) or validation loop (`split=val`) with the regime's own metric panel: what `kdlab train`
logged as `test/*` (or `val/*`). On the run's own data and its last checkpoint the figures are those
of its results.json.

Every evaluation is appended to the list in `<RUN_DIR>/eval.json` (written atomically, under a lock:
evaluations with other overrides never replace each other). An entry says what was evaluated, read
from what was built and loaded: the model's class and parameter count and the config node it was
built from, the weights file and its SHA-256 (and the teacher's), the dataset preset composed, its
datamodule class, the fingerprint of its resolved config and the number of examples of the split,
the split, the overrides, the metrics, the package versions and the time.
"""

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError, DataError
from kdlab.saved_run import Rebuilt, SavedRun, open_run, rebuild

EVAL_FILE = "eval.json"
SPLITS = ("test", "val")


def evaluate(directory: Path, overrides: list[str]) -> tuple[dict[str, Any], Path]:
    """Evaluate the run in `directory` as `overrides` say; append the entry to its eval.json; return both."""
    split, overrides = split_of(overrides)
    run = open_run(directory, overrides)
    rebuilt = rebuild(run)
    metrics, examples = _metrics(run, rebuilt, split)
    entry = _entry(run, rebuilt, split, metrics, examples)
    path = Path(directory) / EVAL_FILE
    append_entry(path, entry)
    return entry, path


def split_of(overrides: list[str]) -> tuple[str, list[str]]:
    """The `split=` of the command line (default test) and the other overrides."""
    splits = [o.split("=", 1)[1] for o in overrides if o.startswith("split=")]
    split = splits[-1] if splits else "test"
    if split not in SPLITS:
        raise ConfigError(f"split={split}: kdlab eval evaluates a held-out split, split=test (the default) or split=val")
    return split, [o for o in overrides if not o.startswith("split=")]


def _metrics(run: SavedRun, rebuilt: Rebuilt, split: str) -> tuple[dict[str, float], int | None]:
    """The regime's metrics of `split` (Lightning's test or validation loop, no logger, no checkpoint) and its size."""
    from hydra.utils import instantiate

    trainer = instantiate(run.cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False,
                          devices=1, num_nodes=1, strategy="auto")
    loop = trainer.test if split == "test" else trainer.validate
    loop(rebuilt.module, datamodule=rebuilt.datamodule, verbose=False)
    metrics = {name: float(value) for name, value in sorted(trainer.callback_metrics.items()) if name.startswith(f"{split}/")}
    loaders = trainer.test_dataloaders if split == "test" else trainer.val_dataloaders
    loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
    sizes = [len(loader.dataset) for loader in loaders if hasattr(getattr(loader, "dataset", None), "__len__")]
    return metrics, sum(sizes) if sizes else None


def _entry(run: SavedRun, rebuilt: Rebuilt, split: str, metrics: dict[str, float], examples: int | None) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    from kdlab.fingerprint import fingerprint
    from kdlab.results import environment_versions
    from kdlab.run import qualified_name
    from kdlab.validate import resolved

    module, model = rebuilt.module, rebuilt.module.model
    return {
        "split": split,
        "overrides": run.overrides,
        "regime": qualified_name(type(module)),
        "model": {
            "built_from": "model.teacher" if run.role == "evaluated" else "model.student",
            "class": qualified_name(type(model)),
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights": rebuilt.weights.record(),
        },
        "teacher": rebuilt.teacher.record() if rebuilt.teacher else None,
        "dataset": {
            "preset": HydraConfig.get().runtime.choices.get("dataset"),
            "datamodule": qualified_name(type(rebuilt.datamodule)),
            "fingerprint": fingerprint(resolved(run.cfg)["dataset"]),
            "examples": examples,
        },
        "metrics": metrics,
        "versions": environment_versions(),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def append_entry(path: Path, entry: dict[str, Any]) -> None:
    """Append `entry` to the JSON list in `path` (created when missing), atomically and under a lock."""
    from filelock import FileLock

    from kdlab.results import storage_error, write_json_atomic

    try:
        lock = FileLock(path.with_name(f".{path.name}.lock"))
        lock.acquire()
    except OSError as error:
        raise storage_error(path, error) from error
    try:
        entries = json.loads(path.read_text()) if path.is_file() else []
        if not isinstance(entries, list):
            raise DataError(f"{path} is not a list of evaluations: move it away, and evaluate again")
        write_json_atomic(path, [*entries, entry])
    except ValueError as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path} is not JSON ({error}): move it away, and evaluate again") from error
    finally:
        lock.release()
