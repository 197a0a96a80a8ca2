"""Epoch time with and without the teacher-output cache (`teacher.outputs.views`), through `kdlab.run.run`.

    python benchmarks/bench_teacher_cache.py [--repeats 1] [--images 320] [--root DIR] [--out benchmarks/results/teacher_cache_cpu.json]

Every variant is a whole `kdlab train` job run in this process (composed as the CLI composes it), timed
per training epoch (first batch to last optimiser step, validation apart) by a callback, in wall-clock
time and in this process's CPU time (one torch thread: on a shared machine the CPU time is the work done,
the wall time also what the other processes took); the variants alternate, `--repeats` times each, and the
median epoch (the first epoch of every job left out) is reported with its speed-up over the teacher
running at every step, beside the wall time of the job's first validation and the median of its later ones
(a frozen teacher runs on each validation image in the first only):

- **CIFAR-shaped pair** resnet32x4 -> resnet8x4 (batch 64, Hinton KD T=4) on tiny CIFAR-100 files written in
  CIFAR's own format (tests/cifar_files.py: random images; CIFAR cannot be downloaded here): the teacher at
  every step (torchvision transforms in a DataLoader), and the cache with K views;
- **digits**, the default `kdlab train`: the teacher at every step, the cache (one view: digits are not
  augmented), and the cache with top-5 soft labels; test accuracy and test KL(teacher || student) of each.

The teacher of each pair is trained once (the teacher cache, under `--root`: a temporary directory unless
given, so a second call can reuse the teachers and entries) before anything is timed. Also reported: the
time to build each cache entry, and the error of top-k soft labels on the digits teacher's training views,
KL(p_T || p~_T) at T = 4, p~ the kept classes plus the uniform tail (`kdlab.data.soft_labels`).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import lightning as L  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

import cifar_files  # noqa: E402
from test_configs import compose_train  # noqa: E402

from kdlab.data.soft_labels import SoftLabels, compress  # noqa: E402
from kdlab.run import run  # noqa: E402

EPOCH_TIMES: list[tuple[float, float]] = []  # (wall s, CPU s) of each training epoch
VALIDATION_TIMES: list[float] = []  # wall s of each validation (the frozen teacher runs in the first only)
QUIET = ["logger=none", "~callbacks.progress_bar", "~callbacks.checkpoint", "++trainer.enable_progress_bar=false",
         "++trainer.enable_model_summary=false"]


class EpochTimer(L.Callback):
    """Appends each training epoch's wall and CPU time (its first batch's start to its last batch's end) to `EPOCH_TIMES`,
    and each validation's wall time to `VALIDATION_TIMES`."""

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.started = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ended = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        EPOCH_TIMES.append((self.ended[0] - self.started[0], self.ended[1] - self.started[1]))

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.validation_started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            VALIDATION_TIMES.append(time.perf_counter() - self.validation_started)


def job(overrides: list[str], root: Path, name: str) -> dict[str, Any]:
    """Run `kdlab train OVERRIDES` here; its results.json and its training epochs' times (the first left out)."""
    output = root / "runs" / f"{name}-{time.time_ns()}"
    cfg = compose_train([*overrides, *QUIET, f"paths.log_dir={root}", f"paths.output_dir={output}"], output)
    with open_dict(cfg):
        cfg.callbacks.epoch_timer = {"_target_": f"{__name__}.EpochTimer"}
    EPOCH_TIMES.clear()
    VALIDATION_TIMES.clear()
    run(cfg)
    return {"results": json.loads((output / "results.json").read_text()), "epochs_s": list(EPOCH_TIMES[1:]),
            "validations_s": list(VALIDATION_TIMES)}


def measure(variants: dict[str, list[str]], root: Path, repeats: int, baseline: str) -> dict[str, Any]:
    """Each variant `repeats` times, alternating; per variant the median epoch, its speed-up over `baseline`,
    the last job's test metrics and its teacher-output record."""
    epochs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    validations: dict[str, list[list[float]]] = {name: [] for name in variants}
    last: dict[str, dict] = {}
    for _ in range(repeats):
        for name, overrides in variants.items():
            done = job(overrides, root, name)
            epochs[name] += done["epochs_s"]
            validations[name].append(done["validations_s"])
            last[name] = done["results"]
            print(f"  {name:28s} epochs (wall, CPU) {', '.join(f'{w:.2f}/{c:.2f}' for w, c in done['epochs_s'])} s", flush=True)
    report = {}
    for name in variants:
        outputs = last[name]["teacher"]["outputs"]
        report[name] = {
            "epoch_s": round(statistics.median(w for w, _ in epochs[name]), 3),
            "epoch_cpu_s": round(statistics.median(c for _, c in epochs[name]), 3),
            "epochs_timed": len(epochs[name]),
            "validation_first_s": round(statistics.median(v[0] for v in validations[name]), 3),
            "validation_later_s": round(statistics.median(t for v in validations[name] for t in v[1:]), 3),
            "test_acc": round(last[name]["metrics"]["test/acc"], 4),
            "test_kl": round(last[name]["metrics"]["test/kl"], 4),
            "cache": None if outputs is None else {key: outputs[key] for key in ("views", "top_k", "num_images", "build_s")},
        }
    for name in variants:
        report[name]["speedup"] = round(report[baseline]["epoch_s"] / report[name]["epoch_s"], 2)
        report[name]["speedup_cpu"] = round(report[baseline]["epoch_cpu_s"] / report[name]["epoch_cpu_s"], 2)
    return report


def top_k_error(root: Path, temperatures: tuple[float, ...], ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Mean KL(p_T || p~_T) over the digits teacher's training views, p~ the top-k soft labels read back."""
    (entry,) = [path for path in root.glob("teachers/*/outputs/*") if json.loads((path / "meta.json").read_text())["top_k"] is None]
    import safetensors.torch

    logits = safetensors.torch.load_file(entry / "outputs.safetensors")["logits"]  # [1, N, C]: the teacher's full logits
    index = torch.arange(logits.shape[1])
    errors = {}
    for k in ks:
        read = SoftLabels({name: tensor[None] for name, tensor in compress(logits[0], k).items()}, logits.shape[-1]).logits(0, index)
        errors[f"top_{k}"] = {f"T={t:g}": round(torch.nn.functional.kl_div((read.double() / t).log_softmax(-1), (logits[0].double() / t)
                                                                           .log_softmax(-1), log_target=True, reduction="batchmean").item(), 6)
                              for t in temperatures}
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--images", type=int, default=320, help="CIFAR-shaped training images")
    parser.add_argument("--views", type=int, default=4, help="K for the CIFAR-shaped pair")
    parser.add_argument("--cifar-epochs", type=int, default=3)
    parser.add_argument("--root", type=Path, default=None, help="where the data, teachers and runs go (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "teacher_cache_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch, pytest.MonkeyPatch.context() as monkeypatch:
        root = args.root or Path(scratch)
        monkeypatch.setattr(cifar_files, "TRAIN_SIZE", args.images)
        cifar_files.write_cifar(root / "data", "cifar100")
        cifar_files.trust_written_files(monkeypatch, root / "data", "cifar100")
        cifar = ["model=cifar_resnet32x4_to_resnet8x4", "dataset=cifar100", f"paths.data_dir={root / 'data'}", "dataset.datamodule.download=false",
                 "dataset.datamodule.num_workers=0", "dataset.datamodule.val_size=0", "teacher.max_epochs=1",
                 f"trainer.max_epochs={args.cifar_epochs}"]
        print("CIFAR-shaped pair resnet32x4 -> resnet8x4", flush=True)
        job([*cifar, "trainer.max_epochs=1"], root / "cifar", "teacher")  # trains and caches the teacher
        cifar_report = measure({
            "teacher_every_step": cifar,
            f"cache_{args.views}_views": [*cifar, f"teacher.outputs.views={args.views}"],
        }, root / "cifar", args.repeats, "teacher_every_step")
        print("digits (kdlab train)", flush=True)
        job(["trainer.max_epochs=1"], root / "digits", "teacher")
        digits_report = measure({
            "teacher_every_step": [],
            "cache": ["teacher.outputs.views=1"],
            "cache_top_5": ["teacher.outputs.views=1", "teacher.outputs.top_k=5"],
        }, root / "digits", args.repeats, "teacher_every_step")
        errors = top_k_error(root / "digits", (1.0, 4.0), (1, 3, 5, 9))
    record = {
        "cifar_pair": {"images": args.images, "classes": 100, "batch_size": 64, "epochs_per_job": args.cifar_epochs, **cifar_report},
        "digits": digits_report,
        "digits_top_k_kl": errors,
        "repeats": args.repeats,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
