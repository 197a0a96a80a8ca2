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
from kdlab.modules.distill import LogitsBySample
from kdlab.objectives.cross_entropy import CrossEntropy
from kdlab.objectives.hinton_kd import HintonKD
from kdlab.results import write_json_atomic


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def hinton_kd() -> HintonKD:
    return HintonKD(get("fkl"), temperature=4.0, ce_weight=0.1, kd_weight=0.9)


def quick_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(**{
        "accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, **kwargs,
    })


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


def test_the_frozen_teacher_runs_once_per_validation_sample_and_the_metrics_stay_the_same() -> None:
    L.seed_everything(0)
    teacher, student = SmallCNN(10, width=8), SmallCNN(10, width=4)
    module = DistillModule(model=student, teacher=teacher, objective=hinton_kd(), optimizer=adam, num_classes=10)
    validated_rows = []
    teacher.register_forward_hook(
        lambda m, args, out: validated_rows.append(len(args[0])) if module.trainer.validating or module.trainer.sanity_checking else None
    )
    datamodule = DigitsDataModule(batch_size=64)
    trainer = quick_trainer(max_epochs=3)
    trainer.fit(module, datamodule=datamodule)
    assert sum(validated_rows) == len(datamodule.split_dataset("val"))  # once per sample: not 2 sanity batches + 3 epochs
    fitted = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    assert {"val/kl", "val/agreement", "val/teacher_acc"} <= set(fitted)
    module.val_teacher_logits = LogitsBySample()  # forget them: the teacher runs again, and agrees exactly
    validated = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
    assert sum(validated_rows) == 2 * len(datamodule.split_dataset("val"))
    assert {k: fitted[k] for k in validated} == validated


def test_logits_by_sample_give_rows_only_once_every_index_is_known() -> None:
    store = LogitsBySample()
    assert store.get(torch.tensor([0, 1])) is None
    store.put(torch.tensor([2, 0]), torch.tensor([[2.0, 2.5], [0.0, 0.5]]))
    assert store.get(torch.tensor([0, 1])) is None  # 1 was never put
    assert torch.equal(store.get(torch.tensor([2, 0, 2])), torch.tensor([[2.0, 2.5], [0.0, 0.5], [2.0, 2.5]]))
    store.put(torch.tensor([5]), torch.tensor([[5.0, 5.5]]))  # grows, keeping the earlier rows
    assert torch.equal(store.get(torch.tensor([5, 2])), torch.tensor([[5.0, 5.5], [2.0, 2.5]]))
    assert store.get(torch.tensor([6])) is None


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


class StepLosses(L.Callback):
    """Each training step's loss and batch size, as the step returned them."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, int]] = []  # (epoch, loss, batch size)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.current_epoch, float(outputs["loss"]), len(batch["label"])))


def test_logged_train_loss_is_the_batch_weighted_mean_of_the_steps_since_the_previous_row(tmp_path: Path) -> None:
    import pandas as pd
    from lightning.pytorch.loggers import CSVLogger

    L.seed_everything(0)
    module = DistillModule(model=SmallCNN(10, width=4), teacher=SmallCNN(10, width=8), objective=hinton_kd(), optimizer=adam, num_classes=10)
    steps = StepLosses()
    trainer = quick_trainer(max_epochs=2, limit_val_batches=0, log_every_n_steps=2, callbacks=[steps],
                            logger=CSVLogger(tmp_path, name="csv", version=""))
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=500))  # 1,168 training images: batches of 500, 500, 168
    rows = pd.read_csv(tmp_path / "csv" / "metrics.csv").dropna(subset=["train/loss"])

    def mean(selected: list[int]) -> float:
        return sum(steps.steps[i][1] * steps.steps[i][2] for i in selected) / sum(steps.steps[i][2] for i in selected)

    # every 2nd step a row with the mean of the steps since the previous row, across the epochs' boundary
    expected = [(1, mean([0, 1])), (3, mean([2, 3])), (5, mean([4, 5]))]
    assert [int(step) for step in rows["step"]] == [step for step, _ in expected]
    assert rows["train/loss"].tolist() == pytest.approx([value for _, value in expected], rel=1e-5)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(mean([4, 5]), rel=1e-5)  # results.json's
    assert {"train/ce", "train/kd"} <= set(rows.columns)

    L.seed_everything(0)  # fewer steps than log_every_n_steps: no row, but the fit's figures are the epoch's mean
    module = DistillModule(model=SmallCNN(10, width=4), teacher=SmallCNN(10, width=8), objective=hinton_kd(), optimizer=adam, num_classes=10)
    steps = StepLosses()
    trainer = quick_trainer(max_epochs=1, limit_val_batches=0, log_every_n_steps=10, callbacks=[steps])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=500))
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(mean([0, 1, 2]), rel=1e-5)


def test_digits_batches_fetched_whole_equal_items_collated() -> None:
    from torch.utils.data import default_collate

    datamodule = DigitsDataModule(batch_size=64)
    datamodule.setup("fit")
    dataset = datamodule.split_dataset("train")
    indices = [5, 0, 17, 3]
    whole = datamodule.collate(dataset.__getitems__(indices))
    one_by_one = default_collate([dataset[i] for i in indices])
    assert whole.keys() == one_by_one.keys()
    for key in whole:
        assert whole[key].dtype == one_by_one[key].dtype
        assert torch.equal(whole[key], one_by_one[key])
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input"].shape == (64, 1, 8, 8) and batch["label"].shape == batch["index"].shape == (64,)
