"""`kdlab export RUN_DIR --format hf|state_dict|torchscript [--out DIR] [--model student|teacher]`.

A finished run's model (`student`: the model the run trained, the default; `teacher`: its teacher,
or the model of a `+method=teacher` run), rebuilt with its weights (`kdlab.saved_run`), written for
use outside kdlab into a new (or empty) directory, `<RUN_DIR>/export/<model>-<format>` by default.
The directory is written whole in a staging directory beside it and renamed into place:

- `hf`: `save_pretrained` of a Hugging Face model (a kdlab `SequenceClassifier`'s inner
  `AutoModelForSequenceClassification`, a policy's causal LM) with the datamodule's tokenizer:
  `AutoModel*.from_pretrained(DIR)` loads it. Models that are not Hugging Face models are refused.
- `state_dict`: `model.safetensors` (the model's `state_dict`, tensors only).
- `torchscript`: `model.pt`, `torch.jit.trace` of the model on one test batch of the run's data
  (`torch.jit.load` loads it without kdlab). The traced module must reproduce the model's logits on
  that batch and on its first example alone, else the export is refused; so are models that take
  other inputs than one image tensor (text batches: use `hf` or `state_dict`).

Every format also writes `model.json`: the format, which model, its class, the config node it was
built from (resolved, with its `_target_`: `hydra.utils.instantiate(config)` builds the architecture
again, `load_state_dict` of `model.safetensors` gives it its weights), the weights file it was read
from and its SHA-256, the input shape (torchscript) and the package versions.
"""

import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError, StorageError
from kdlab.saved_run import Rebuilt, SavedRun, open_run, rebuild

FORMATS = ("hf", "state_dict", "torchscript")
MODELS = ("student", "teacher")
SPEC_FILE = "model.json"
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}  # traced logits against the model's (float32 kernels may reorder sums)


def export(directory: Path, format: str, out: Path | None = None, model: str = "student") -> Path:
    """Write the run's `model` in `format` to `out`; return `out`. Every check comes before any model is built."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format} is not an export format: use --format {'|'.join(FORMATS)}")
    if model not in MODELS:
        raise ConfigError(f"--model {model}: export --model student (the model the run trained) or --model teacher")
    out = Path(out) if out is not None else Path(directory) / "export" / f"{model}-{format}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StorageError(f"--out {out} exists and is not an empty directory: choose another --out, or delete it")
    run = open_run(directory, [])
    key = _config_key(run, model)
    rebuilt = rebuild(run, with_teacher=model == "teacher")
    own = model == "student" or run.role == "evaluated"
    chosen = rebuilt.module.model if own else rebuilt.module.teacher
    weights = rebuilt.weights if own or run.role == "online" else rebuilt.teacher  # an online teacher is in the checkpoint
    spec = {"format": format, "model": model, "class": f"{type(chosen).__module__}.{type(chosen).__qualname__}",
            "config": _resolved_node(run, key), "built_from": key, "weights": weights.record() if weights else None}
    writer = {"hf": _write_hf, "state_dict": _write_state_dict, "torchscript": _write_torchscript}[format]
    _write_directory(out, lambda staging: writer(chosen.eval(), rebuilt, staging, spec))
    return out


def _config_key(run: SavedRun, model: str) -> str:
    """The config node the exported model was built from; `ConfigError` when the run has no such model."""
    role = run.role
    if role == "evaluated":  # +method=teacher: the run's model is the teacher
        if model == "student":
            raise ConfigError(f"{run.directory} trained no student (+method={run.method} evaluates the teacher): use --model teacher")
        return "model.teacher"
    if model == "teacher" and not role:
        raise ConfigError(f"{run.directory} has no teacher (+method={run.method} trains one model): use --model student")
    return f"model.{model}"


def _resolved_node(run: SavedRun, key: str) -> dict[str, Any]:
    from kdlab.validate import resolved

    node = resolved(run.cfg)
    for part in key.split("."):
        node = node[part]
    return node


def _write_directory(out: Path, write: Callable[[Path], None]) -> None:
    """Run `write(staging)` on a new directory beside `out`, then rename it to `out` (an empty `out` is replaced)."""
    from kdlab.results import storage_error

    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        staging.mkdir(parents=True)
        write(staging)
        os.replace(staging, out)
    except OSError as error:
        if isinstance(error, StorageError):
            raise
        raise storage_error(out, error) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_spec(staging: Path, spec: dict[str, Any]) -> None:
    from kdlab.results import environment_versions

    (staging / SPEC_FILE).write_text(json.dumps({**spec, "versions": environment_versions()}, indent=2, default=str) + "\n")


def _write_hf(model: Any, rebuilt: Rebuilt, staging: Path, spec: dict[str, Any]) -> None:
    from transformers import PreTrainedModel

    pretrained = next((m for m in (model, getattr(model, "model", None)) if isinstance(m, PreTrainedModel)), None)
    if pretrained is None:
        raise ConfigError(f"--format hf writes Hugging Face models, but the {spec['model']} is a {spec['class']}: "
                          "use --format state_dict or --format torchscript")
    pretrained.save_pretrained(staging)
    rebuilt.datamodule.setup("test")
    tokenizer = getattr(rebuilt.datamodule, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    _write_spec(staging, spec | {"hf_class": f"{type(pretrained).__module__}.{type(pretrained).__qualname__}"})


def _write_state_dict(model: Any, rebuilt: Rebuilt, staging: Path, spec: dict[str, Any]) -> None:
    import safetensors.torch

    from kdlab.teachers import storable

    safetensors.torch.save_file(storable(model.state_dict()), staging / "model.safetensors")
    _write_spec(staging, spec)


def _write_torchscript(model: Any, rebuilt: Rebuilt, staging: Path, spec: dict[str, Any]) -> None:
    import torch

    rebuilt.datamodule.setup("test")
    example = next(iter(rebuilt.datamodule.test_dataloader()))["input"]
    if not isinstance(example, torch.Tensor):
        kind = f"a dict of {', '.join(example)}" if isinstance(example, dict) else type(example).__name__
        raise ConfigError(f"--format torchscript traces models of one image tensor, but the {spec['model']} ({spec['class']}) "
                          f"takes {kind}: use --format hf or --format state_dict")
    example = example.to(next(model.parameters()).device)
    with torch.no_grad():
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as error:  # noqa: BLE001 - whatever tracing meets, the model cannot be exported this way
            raise ConfigError(f"--format torchscript: the {spec['model']} ({spec['class']}) cannot be traced "
                              f"({type(error).__name__}: {str(error).splitlines()[0]}): use --format state_dict") from error
        for inputs in (example, example[:1]):
            expected, got = model(inputs), traced(inputs)
            if expected.shape != got.shape or not torch.allclose(got, expected, **TOLERANCE):
                raise ConfigError(f"--format torchscript: the traced {spec['model']} ({spec['class']}) does not reproduce its "
                                  f"logits on inputs of shape {list(inputs.shape)} (the model's forward depends on more than "
                                  "its input's values): use --format state_dict")
    traced.save(str(staging / "model.pt"))
    _write_spec(staging, spec | {"input_shape": list(example.shape[1:])})
