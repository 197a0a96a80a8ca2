"""Every CIFAR paper preset composes and runs two training steps end to end on the tiny CIFAR
files (teacher trained by the runner and cached, distillation, evaluation, results.json); bad
combinations fail before training."""

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from cifar_files import cifar_root, module_cifar_root  # noqa: F401  (fixtures)
from hydra.utils import instantiate
from test_configs import CONF, compose_train

from kdlab.checks import check_label_spaces
from kdlab.data import CIFARDataModule
from kdlab.divergences import get
from kdlab.models import create
from kdlab.modules import DistillModule
from kdlab.objectives.hinton_kd import HintonKD
from kdlab.run import run

EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("cifar*.yaml"))
UNPUBLISHED = {"nkd", "bdkd"}  # methods with no verified CIFAR-100 number to reach
# Two steps of batch 8, one evaluation batch; the teacher gets the same (trainer.limit_* apply to it too).
TWO_STEPS = [
    "logger=none", "dataset.batch_size=8", "dataset.datamodule.num_workers=0", "dataset.datamodule.download=false",
    "trainer.max_epochs=1", "teacher.max_epochs=1", "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1", "~callbacks.checkpoint", "~callbacks.progress_bar",
    "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false",
]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outputs")  # shared: presets with the same teacher reuse its cache entry


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_cifar_presets_run_two_steps(experiment: str, module_cifar_root: Path, log_dir: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        [f"experiment={experiment}", *TWO_STEPS, f"paths.data_dir={module_cifar_root}", f"paths.log_dir={log_dir}",
         f"paths.output_dir={tmp_path}"],
        tmp_path,
    )
    assert cfg.trainer.max_epochs == 1 and cfg.dataset.name == "cifar100"
    if experiment.split("_")[1] in UNPUBLISHED:
        assert cfg.published is None
    else:
        assert set(cfg.published) == {"metric", "value", "teacher_value", "source"} and 0.6 < cfg.published.value < 0.8
    run(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and results["method"] == experiment.split("_")[1]
    for name in ("acc", "top5", "ece", "teacher_acc", "teacher_ece", "agreement", "kl", "rkl", "js", "tvd"):
        assert math.isfinite(results["metrics"][f"test/{name}"]) and results["metrics"][f"test/{name}"] > -1e-6, name
    if cfg.module._target_.endswith("OnlineDistillModule"):
        assert results["teacher"] is None  # trained alongside the student, not taken from the cache
    else:
        assert results["teacher"]["source"] in {"trained", "cache"} and "acc" in results["teacher"]["metrics"]
    assert results["config"]["published"] == (None if cfg.published is None else dict(cfg.published))


def test_the_recipe_replaces_the_default_optimisation(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=cifar100_kd_resnet32x4_shufflenetv2"], tmp_path)
    assert dict(cfg.optimizer) == {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9,
                                   "weight_decay": 5.0e-4}
    assert cfg.teacher.optimizer.lr == 0.05 and cfg.teacher.max_epochs == cfg.trainer.max_epochs == 240
    for scheduler in (cfg.scheduler, cfg.teacher.scheduler):
        assert dict(scheduler) == {"_target_": "torch.optim.lr_scheduler.MultiStepLR", "_partial_": True,
                                   "milestones": [150, 180, 210], "gamma": 0.1}
    assert cfg.dataset.batch_size == 64 and cfg.dataset.datamodule.val_size == 0


def test_on_device_training_runs_on_the_cpu(cifar_root: Path) -> None:
    L.seed_everything(0)
    dm = CIFARDataModule("cifar10", root=str(cifar_root), batch_size=8, val_size=20, download=False, on_device=True)
    module = DistillModule(model=create("resnet8", num_classes=10), teacher=create("resnet14", num_classes=10),
                           objective=HintonKD(get("fkl"), temperature=4.0, ce_weight=0.1, kd_weight=0.9),
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.05), num_classes=10)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=1, limit_val_batches=1,
                        limit_test_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    loaders = []
    make_loader = dm.train_dataloader
    dm.train_dataloader = lambda: loaders.append(make_loader()) or loaders[-1]
    trainer.fit(module, datamodule=dm)
    (results,) = trainer.test(module, datamodule=dm, verbose=False)
    assert trainer.global_step == 2 and 0 <= results["test/acc"] <= 1
    assert loaders[-1].sampler.epoch == 1  # Lightning advanced the shuffling order of the second epoch


def test_label_space_mismatches_are_caught_before_training(cifar_root: Path, tmp_path: Path) -> None:
    dm = CIFARDataModule("cifar100", root=str(cifar_root), batch_size=4, download=False, num_workers=0, val_size=10)
    with pytest.raises(ValueError, match="dataset has 100 classes .* the teacher predicts 10"):
        check_label_spaces(dm, 100, create("resnet8x4", num_classes=100), create("resnet32x4", num_classes=10))
    cfg = compose_train(["experiment=cifar100_kd_resnet56_resnet20", "dataset.num_classes=10"], tmp_path)
    with pytest.raises(Exception, match="cifar100 has 100 classes, but num_classes=10"):
        instantiate(cfg.dataset.datamodule)
