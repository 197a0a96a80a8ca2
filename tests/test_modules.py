"""LightningModules, the teacher's freezing, the pre-training checks and the run's guards."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from kdlab.checks import check_label_spaces
from kdlab.data import DigitsDataModule
from kdlab.divergences import get
from kdlab.models import SmallCNN
from kdlab.modules import DistillModule, NonFiniteLossError, TeacherModule
from kdlab.objectives.cross_entropy import CrossEntropy
from kdlab.objectives.hinton_kd import HintonKD
from kdlab.results import write_json_atomic


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def hinton_kd() -> HintonKD:
    return HintonKD(get("fkl"), temperature=4.0, ce_weight=0.1, kd_weight=0.9)


def quick_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )


def test_distillation_never_updates_the_teacher() -> None:
    L.seed_everything(0)
    teacher, student = SmallCNN(10, width=8), SmallCNN(10, width=4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BN running stats included
    module = DistillModule(model=student, teacher=teacher, objective=hinton_kd(), optimizer=adam, num_classes=10)
    quick_trainer(max_steps=3, limit_val_batches=1).fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(id(p) not in {id(q) for q in teacher.parameters()} for g in module.optimizers().param_groups for p in g["params"])


class ExplodingKD(HintonKD):
    """Hinton KD whose distillation term turns to NaN at the third step."""

    def __init__(self) -> None:
        super().__init__(get("fkl"), temperature=4.0, ce_weight=0.1, kd_weight=0.9)
        self.calls = 0

    def forward(self, outputs, batch):
        self.calls += 1
        loss, logs = super().forward(outputs, batch)
        if self.calls == 3:
            logs["kd"] = torch.tensor(float("nan"))
            loss = loss + logs["kd"]
        return loss, logs


def test_non_finite_loss_stops_the_run_naming_the_step_and_term() -> None:
    module = DistillModule(model=SmallCNN(10, width=4), teacher=SmallCNN(10, width=4), objective=ExplodingKD(),
                           optimizer=adam, num_classes=10)
    with pytest.raises(NonFiniteLossError, match=r"global step 2 .*non-finite terms: kd=nan"):
        quick_trainer(max_steps=5, limit_val_batches=0).fit(module, datamodule=DigitsDataModule(batch_size=32))


def test_supervised_module_learns_digits() -> None:
    L.seed_everything(0)
    module = TeacherModule(model=SmallCNN(10, width=16), objective=CrossEntropy(label_smoothing=0.0), optimizer=adam, num_classes=10)
    trainer = quick_trainer(max_epochs=3)
    datamodule = DigitsDataModule()
    trainer.fit(module, datamodule=datamodule)
    (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    assert results["test/acc"] > 0.8


def test_mismatched_label_spaces_are_caught_before_training() -> None:
    datamodule = DigitsDataModule()
    with pytest.raises(ValueError, match="dataset has 10 classes .* the teacher predicts 100"):
        check_label_spaces(datamodule, 10, SmallCNN(10, width=4), SmallCNN(100, width=4))
    with pytest.raises(ValueError, match="the student predicts 5"):
        check_label_spaces(datamodule, 10, SmallCNN(5, width=4))
    check_label_spaces(datamodule, 10, SmallCNN(10, width=4), SmallCNN(10, width=4))


def test_digits_splits_are_disjoint_and_stratified() -> None:
    datamodule = DigitsDataModule()
    datamodule.setup()
    sizes = {name: len(split) for name, split in datamodule.splits.items()}
    assert sum(sizes.values()) == 1797
    flat = {name: {tuple(x.flatten().tolist()) for x in split.inputs} for name, split in datamodule.splits.items()}
    assert not (flat["train"] & flat["test"]) and not (flat["val"] & flat["test"])
    assert set(datamodule.splits["test"].labels.tolist()) == set(range(10))


def test_atomic_json_write_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        write_json_atomic(path, {"c": 3, "bad": Unprintable()})  # fails half-way through writing
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
