"""Every vision method preset trains end to end (2 steps on the digits, CPU), and bad set-ups fail
before training with a ValueError that names the problem."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import kdlab
from hydra.utils import get_class, instantiate
from test_configs import compose_train
from torch import nn

from kdlab.data import DigitsDataModule
from kdlab.models import SmallCNN
from kdlab.modules import DistillModule, OnlineDistillModule, TeacherModule
from kdlab.objectives.cross_entropy import CrossEntropy
from kdlab.run import build_objective, composed_method, run

METHODS = ["kd", "dkd", "nkd", "uskd", "pskd", "sinkd", "bdkd", "dhkd", "nd"]
# Each preset as published, plus the variants its flags and divergence slot offer.
CASES = [[f"+method={method}"] for method in METHODS] + [
    ["+method=kd", "divergence=sinkhorn"],  # a batch-level divergence in the KD slot
    ["+method=dkd", "divergence=js"],
    ["+method=nd", "divergence=rkl"],
    ["+method=sinkd", "objective.mode=paper_clean"],
    ["+method=uskd", "objective.rank_uses_log_probs=false"],
    ["+method=bdkd", "objective.weighting=sigmoid"],
    ["+method=dhkd", "objective.grad_align=false", "objective.aux_head=linear"],
]


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def quick_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )


def build(overrides: list[str], tmp_path: Path) -> tuple[L.LightningModule, DigitsDataModule]:
    """The module a `kdlab train OVERRIDES` run builds, from the composed presets, with untrained models."""
    cfg = compose_train(overrides, tmp_path)
    module_class = get_class(cfg.module._target_)
    objective, _ = build_objective(cfg, composed_method())
    datamodule = instantiate(cfg.dataset.datamodule)
    student = instantiate(cfg.model.student)
    teacher = instantiate(cfg.model.teacher) if module_class.teacher_role else None
    module_class.check_models(datamodule, cfg.dataset.num_classes, student, teacher, objective)
    module = module_class(
        model=student, objective=objective, optimizer=adam, num_classes=cfg.dataset.num_classes,
        **({"teacher": teacher} if teacher is not None else {}),
    )
    return module, datamodule


class ParameterSnapshot(L.Callback):
    """The parameters as training starts (after `prepare` built the objective's layers)."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.before = {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("overrides", CASES, ids=lambda overrides: " ".join(overrides).replace("+method=", ""))
def test_method_trains_two_steps_end_to_end(overrides: list[str], tmp_path: Path) -> None:
    L.seed_everything(0)
    module, datamodule = build(overrides, tmp_path)
    method = overrides[0].removeprefix("+method=")
    snapshot = ParameterSnapshot()
    trainer = quick_trainer(max_epochs=2, max_steps=2, limit_val_batches=1, callbacks=[snapshot])
    trainer.fit(module, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    changed = {name for name, p in module.named_parameters() if not torch.equal(p, snapshot.before[name])}
    assert any(name.startswith("model.") for name in changed)
    if module.teacher_role == "online":  # bdkd: the teacher learns too
        assert any(name.startswith("teacher.") for name in changed)
    if method in ("uskd", "dhkd", "nd"):  # the objective's own layers are trained with the model
        assert any(name.startswith("objective.") for name in changed)


def test_objective_layers_are_sized_from_the_models(tmp_path: Path) -> None:
    uskd, datamodule = build(["+method=uskd"], tmp_path)
    quick_trainer(max_steps=1, limit_val_batches=0).fit(uskd, datamodule=datamodule)
    assert uskd.objective.weak_head.in_features == 8  # the digits student's first stage (width 8), pooled
    nd, datamodule = build(["+method=nd"], tmp_path)
    quick_trainer(max_steps=1, limit_val_batches=0).fit(nd, datamodule=datamodule)
    assert nd.objective.projector[2].in_features == 16 and nd.objective.projector[2].out_features == 64
    assert nd.objective.directions.shape == (10, 64)
    torch.testing.assert_close(nd.objective.directions.norm(dim=-1), torch.ones(10))


def test_pskd_records_one_prediction_per_trained_sample(tmp_path: Path) -> None:
    module, datamodule = build(["+method=pskd"], tmp_path)
    quick_trainer(max_epochs=3, max_steps=3, limit_val_batches=0).fit(module, datamodule=datamodule)
    assert module.objective.predictions.shape == (len(datamodule.splits["train"]), 10)
    assert module.objective.recorded.sum().item() == 3 * 64
    torch.testing.assert_close(module.objective.predictions[module.objective.recorded].sum(-1), torch.ones(3 * 64))


def test_pskd_buffer_is_restored_when_resuming(tmp_path: Path) -> None:
    module, datamodule = build(["+method=pskd"], tmp_path)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        max_epochs=1, limit_train_batches=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    ckpt = tmp_path / "pskd.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, datamodule = build(["+method=pskd"], tmp_path)
    trainer = quick_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(resumed, datamodule=datamodule, ckpt_path=ckpt)  # nothing left to train: restores only
    torch.testing.assert_close(resumed.objective.predictions, module.objective.predictions)


def test_online_distillation_reports_both_networks(tmp_path: Path) -> None:
    module, datamodule = build(["+method=bdkd"], tmp_path)
    assert isinstance(module, OnlineDistillModule)
    optimised = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert {id(p) for p in module.teacher.parameters()} <= optimised
    trainer = quick_trainer(max_steps=2, limit_val_batches=1, limit_test_batches=1)
    trainer.fit(module, datamodule=datamodule)
    (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    assert {"test/acc", "test/ece", "test/teacher_acc", "test/teacher_ece", "test/agreement"} <= set(results)


# --- bad input --------------------------------------------------------------------------------


class PlainCNN(nn.Module):
    """A classifier whose forward cannot return features."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_feature_methods_refuse_models_without_features(tmp_path: Path) -> None:
    nd, _ = build_objective(compose_train(["+method=nd"], tmp_path), "nd")
    uskd, _ = build_objective(compose_train(["+method=uskd"], tmp_path), "uskd")
    datamodule = DigitsDataModule()
    with pytest.raises(ValueError, match=r"ND needs intermediate features, but the teacher \(PlainCNN\) cannot return them"):
        DistillModule.check_models(datamodule, 10, SmallCNN(10, width=4), PlainCNN(), nd)
    with pytest.raises(ValueError, match=r"USKD needs intermediate features, but the student \(PlainCNN\)"):
        TeacherModule.check_models(datamodule, 10, PlainCNN(), None, uskd)
    TeacherModule.check_models(datamodule, 10, PlainCNN(), None, CrossEntropy(label_smoothing=0.0))  # plain CE needs none


# --- the divergence sweep, as a user runs it --------------------------------------------------


@pytest.mark.slow
def test_kd_divergence_sweep_is_one_multirun(outputs: Path) -> None:
    kdlab("train", "-m", "+method=kd", "divergence=fkl,rkl", "trainer.max_epochs=1", "teacher.max_epochs=1",
          "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "logger=none", outputs=outputs)
    results = [json.loads(p.read_text()) for p in sorted((outputs / "multirun").rglob("results.json"))]
    assert sorted(r["divergence"] for r in results) == ["fkl", "rkl"]
    assert all(r["status"] == "completed" and r["method"] == "kd" for r in results)
