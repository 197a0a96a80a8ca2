"""The training loop's cost: kdlab's Lightning step against a hand-written PyTorch loop doing the same work.

    python benchmarks/bench_loop.py [--repeats 5] [--out benchmarks/results/loop_cpu.json]

For each pair, the same models (same initial weights), the same data tensors, the same optimiser
and LR schedule (the config's AdamW and cosine schedule) and the same objective object (kdlab's
`HintonKD`, T=4, fkl: what `kdlab train` trains with) for the same number of steps:

- **raw**: a hand-written loop over the in-memory tensors (a permutation per epoch, slices of the
  batch size): zero_grad, teacher forward under no_grad, student forward, loss, backward, step,
  the scheduler stepped per epoch;
- **kdlab**: kdlab's `DistillModule` fitted by the Trainer `kdlab.run.build_trainer` builds for the
  composed `kdlab train` config (its callbacks: checkpoints, progress bar, LR monitor, `ResumableRun`;
  its loggers: CSV + W&B offline), on the datamodule the config builds (digits) or an in-memory one
  of random CIFAR-shaped tensors through kdlab's own split datamodule (resnet32x4 -> resnet8x4);
- **Lightning floor**: the same step in a LightningModule with nothing else, in a bare Trainer on
  the same datamodule: what Lightning's loop costs before kdlab adds anything.

Training only (`trainer.limit_val_batches=0`): the time from the start of the first timed epoch to
the end of training, the first `warmup` epochs left out; images/s = timed images / that time. The
two variants alternate, `--repeats` times each, and the medians and their ratio are reported. The
digits pair is also timed with validation every epoch (kdlab's default), the raw loop then doing the
same evaluation (teacher and student forward on the val split, kdlab's `ClassificationPanel`).

Where kdlab's remaining time goes: Lightning's `SimpleProfiler` (`trainer.profiler=simple`) on one
more kdlab digits fit, the per-step actions in ms per step, beside the raw loop's whole step.
"""

import argparse
import copy
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from kdlab.data.digits import IndexedTensorDataset  # noqa: E402
from kdlab.data.splits import SplitDataModule  # noqa: E402
from kdlab.loggers import finish_wandb_run  # noqa: E402
from kdlab.metrics import ClassificationPanel  # noqa: E402
from kdlab.run import build_objective, build_trainer, wandb_tags  # noqa: E402

PAIRS = {
    # name: (overrides, epochs, warm-up epochs, random CIFAR-shaped train images or None for the real digits)
    "digits": ([], 12, 2, None),
    "resnet32x4_resnet8x4": (["model=cifar_resnet32x4_to_resnet8x4", "dataset=cifar100"], 1, 0, 4 * 64),
}


class RandomImages(SplitDataModule):
    """In-memory random `[N, 3, 32, 32]` images with labels of `num_classes` classes, through kdlab's split datamodule."""

    batches = "labelled"

    def __init__(self, size: int, num_classes: int, batch_size: int) -> None:
        super().__init__(batch_size)
        generator = torch.Generator().manual_seed(0)
        self.dataset = IndexedTensorDataset(torch.randn(size, 3, 32, 32, generator=generator),
                                            torch.randint(0, num_classes, (size,), generator=generator))
        self.num_classes = num_classes

    def split_dataset(self, split: str) -> IndexedTensorDataset:
        return self.dataset


def now() -> tuple[float, float]:
    """(wall-clock, this process's CPU time) in seconds."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    return tuple(b - a for a, b in zip(start, now(), strict=True))  # type: ignore[return-value]


class Clock(L.Callback):
    """The (wall-clock, CPU) time from the start of training epoch `warmup` to the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, (0.0, 0.0), (0.0, 0.0)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.warmup:
            self.start = now()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = since(self.start)


def compose_job(overrides: list[str], run_dir: Path) -> DictConfig:
    """The job config of `kdlab train OVERRIDES` with its run directory `run_dir`, as Hydra gives it to the job."""
    GlobalHydra.instance().clear()
    with initialize_config_module("kdlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.choices.method = "kd"
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class Pair:
    """One teacher/student pair: the composed config, the data, initial weights, and the two loops."""

    def __init__(self, name: str, root: Path, validate: bool) -> None:
        overrides, self.epochs, self.warmup, random_size = PAIRS[name]
        self.name, self.root, self.validate, self.runs = name, root, validate, 0
        trainer_overrides = [f"trainer.max_epochs={self.epochs}"] + ([] if validate else ["trainer.limit_val_batches=0"])
        self.cfg = compose_job([*overrides, *trainer_overrides], root / "compose")
        if random_size is None:
            self.datamodule = instantiate(self.cfg.dataset.datamodule)
        else:
            self.datamodule = RandomImages(random_size, self.cfg.dataset.num_classes, self.cfg.dataset.batch_size)
        self.datamodule.setup("fit")
        train = self.datamodule.split_dataset("train")
        self.inputs, self.labels = train.inputs, train.labels
        self.val = self.datamodule.split_dataset("val") if validate else None
        L.seed_everything(self.cfg.seed)
        self.student = instantiate(self.cfg.model.student)
        self.teacher = instantiate(self.cfg.model.teacher).eval().requires_grad_(False)
        self.batch_size = self.cfg.dataset.batch_size
        self.timed_images = (self.epochs - self.warmup) * len(self.inputs)

    def objective(self) -> torch.nn.Module:
        return build_objective(self.cfg, "kd")[0]

    def raw(self) -> tuple[float, float]:
        """(wall-clock, CPU) seconds of the timed epochs of the hand-written loop."""
        torch.use_deterministic_algorithms(bool(self.cfg.trainer.deterministic))  # as the Trainer sets it
        student, teacher, objective = copy.deepcopy(self.student), self.teacher, self.objective()
        optimizer = instantiate(self.cfg.optimizer)(student.parameters())
        scheduler = instantiate(self.cfg.scheduler)(optimizer)
        panel = ClassificationPanel(self.cfg.dataset.num_classes) if self.validate else None
        generator = torch.Generator().manual_seed(self.cfg.seed)
        start = now()
        for epoch in range(self.epochs):
            if epoch == self.warmup:
                start = now()
            student.train()
            order = torch.randperm(len(self.inputs), generator=generator)
            for first in range(0, len(order), self.batch_size):
                rows = order[first : first + self.batch_size]
                inputs, labels = self.inputs[rows], self.labels[rows]
                optimizer.zero_grad()
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                loss, _ = objective({"logits": student(inputs), "teacher_logits": teacher_logits}, {"label": labels})
                loss.backward()
                optimizer.step()
            scheduler.step()
            if panel is not None:
                student.eval()
                with torch.no_grad():
                    for first in range(0, len(self.val), self.batch_size):
                        inputs, labels = self.val.inputs[first : first + self.batch_size], self.val.labels[first : first + self.batch_size]
                        panel.update(student(inputs), labels, teacher(inputs))
                panel.compute()
                panel.reset()
        return since(start)

    def kdlab(self, profiler: str | None = None) -> tuple[float, float]:
        """(wall-clock, CPU) seconds of the timed epochs of `kdlab train`'s module and Trainer (with `trainer.profiler=profiler`,
        kept as `self.profiler`)."""
        self.runs += 1
        run_dir = self.root / f"run{self.runs}"
        cfg = compose_job([*PAIRS[self.name][0], f"trainer.max_epochs={self.epochs}",
                           *([] if self.validate else ["trainer.limit_val_batches=0"])], run_dir)
        objective, record = build_objective(cfg, "kd")
        module = instantiate(cfg.module, model=copy.deepcopy(self.student), objective=objective, optimizer=instantiate(cfg.optimizer),
                             scheduler=instantiate(cfg.scheduler), num_classes=cfg.dataset.num_classes, teacher=self.teacher)
        record = {"method": "kd", "divergence": record["divergence"], "model": cfg.model.name, "dataset": cfg.dataset.name, "seed": cfg.seed}
        with open_dict(cfg):
            cfg.trainer.profiler = profiler
        trainer, _ = build_trainer(cfg, wandb_tags(record))
        self.profiler = trainer.profiler
        clock = Clock(self.warmup)
        trainer.callbacks.insert(0, clock)  # first: its epoch-end hook runs before the others'
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        try:
            trainer.fit(module, datamodule=self.datamodule)
        finally:
            finish_wandb_run()
        return clock.seconds


class MinimalKD(L.LightningModule):
    """The same step as a LightningModule with nothing else (no logging, metrics or checks): Lightning's own floor."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, objective: torch.nn.Module, cfg: DictConfig) -> None:
        super().__init__()
        self.student, self.objective, self.cfg = student, objective, cfg
        self.teacher = [teacher]  # not a submodule: frozen, outside the optimiser and the checkpoint

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher[0](batch["input"])
        return self.objective({"logits": self.student(batch["input"]), "teacher_logits": teacher_logits}, batch)[0]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.cfg.optimizer)(self.student.parameters())
        return {"optimizer": optimizer, "lr_scheduler": instantiate(self.cfg.scheduler)(optimizer)}


def lightning_floor(pair: Pair) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of the timed epochs of `MinimalKD` in a bare Trainer (no callbacks, loggers or
    progress bar; `trainer.deterministic` as kdlab's): what any Lightning fit of this step costs."""
    clock = Clock(pair.warmup)
    trainer = L.Trainer(max_epochs=pair.epochs, limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                        deterministic=pair.cfg.trainer.deterministic, accelerator="cpu", devices=1)
    trainer.fit(MinimalKD(copy.deepcopy(pair.student), pair.teacher, pair.objective(), pair.cfg), datamodule=pair.datamodule)
    return clock.seconds


def compare(pair: Pair, repeats: int) -> dict[str, Any]:
    """The loops `repeats` times, alternating; images/s by wall-clock and by CPU time, medians and ratios
    (the Lightning floor, `lightning_floor`, on the training-only runs)."""
    times: dict[str, list[tuple[float, float]]] = {"raw": [], "kdlab": []} | ({} if pair.validate else {"lightning_floor": []})
    for _ in range(repeats):
        times["raw"].append(pair.raw())
        times["kdlab"].append(pair.kdlab())
        if "lightning_floor" in times:
            times["lightning_floor"].append(lightning_floor(pair))
    result: dict[str, Any] = {"pair": pair.name, "validation": pair.validate, "epochs": pair.epochs, "warmup_epochs": pair.warmup,
                              "timed_images": pair.timed_images, "batch_size": pair.batch_size}
    for clock, column in (("wall", 0), ("cpu", 1)):
        rates = {name: [pair.timed_images / t[column] for t in values] for name, values in times.items()}
        medians = {name: statistics.median(values) for name, values in rates.items()}
        per_repeat = [k / r for k, r in zip(rates["kdlab"], rates["raw"], strict=True)]
        result[clock] = {"images_per_s_median": {k: round(v, 1) for k, v in medians.items()},
                         "ratio_kdlab_to_raw": round(medians["kdlab"] / medians["raw"], 3),
                         **({"ratio_lightning_floor_to_raw": round(medians["lightning_floor"] / medians["raw"], 3)} if "lightning_floor" in medians else {}),
                         "ratio_per_repeat": [round(r, 3) for r in per_repeat],
                         "images_per_s": {k: [round(v, 1) for v in values] for k, values in rates.items()}}
        print(f"{pair.name:22s} val={pair.validate!s:5s} {clock:4s} raw {medians['raw']:7.0f} img/s  kdlab {medians['kdlab']:7.0f} "
              f"img/s  ratio {medians['kdlab'] / medians['raw']:.3f} (repeats {min(per_repeat):.2f}-{max(per_repeat):.2f})"
              + (f"  Lightning floor {medians['lightning_floor'] / medians['raw']:.3f}" if "lightning_floor" in medians else ""), flush=True)
    return result


def profile(pair: Pair, top: int = 14) -> dict[str, Any]:
    """Where kdlab's step time goes: Lightning's `SimpleProfiler` on one more kdlab fit (every hook and
    loop action timed), in ms per training step over all epochs, beside the raw loop's whole step."""
    steps = pair.epochs * math.ceil(len(pair.inputs) / pair.batch_size)
    pair.kdlab(profiler="simple")
    raw_wall, _ = pair.raw()
    per_step = {action: 1000 * sum(durations) / steps for action, durations in pair.profiler.recorded_durations.items()
                if len(durations) >= steps}  # the per-step actions
    rows = sorted(per_step.items(), key=lambda item: -item[1])[:top]
    raw_step = 1000 * raw_wall / ((pair.epochs - pair.warmup) * math.ceil(len(pair.inputs) / pair.batch_size))
    for action, ms in rows:
        print(f"  {ms:7.3f} ms/step  {action}")
    print(f"  {raw_step:7.3f} ms/step  raw loop, whole step")
    return {"ms_per_step": {action: round(ms, 3) for action, ms in rows}, "raw_loop_ms_per_step": round(raw_step, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a shared machine, 2 OpenMP "
                        "threads are many times slower whenever a neighbour holds a core)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loop_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as root:
        pairs = {name: Pair(name, Path(root) / name, validate=False) for name in args.pairs.split(",")}
        for pair in pairs.values():
            results.append(compare(pair, args.repeats))
        if "digits" in pairs:
            results.append(compare(Pair("digits", Path(root) / "digits_val", validate=True), args.repeats))
            breakdown = profile(pairs["digits"])
    record = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "lightning": L.__version__,
                    "load_average_start": [round(v, 2) for v in load], "load_average_end": [round(v, 2) for v in os.getloadavg()]},
        "results": results,
        "profile_kdlab_digits": breakdown if "digits" in pairs else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
