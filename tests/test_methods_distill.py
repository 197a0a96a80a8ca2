"""OFA-KD, PLD, TGeo-KD, ABKD and KD from MCMI teachers train end to end (2 steps on the digits, CPU);
the MCMI teacher recipe enters the teacher cache once and is reused by every student method."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict
from test_configs import compose_train
from test_methods_vision import ParameterSnapshot, build, quick_trainer

from kdlab.errors import ConfigError
from kdlab.fingerprint import fingerprint
from kdlab.models.torchvision_models import TorchvisionClassifier
from kdlab.run import run
from kdlab.teachers import teacher_config

CASES = [
    ["+method=ofa"],
    ["+method=ofa", "model=digits_cnn_to_tv_vit"],  # a ViT student: the token projectors
    ["+method=ofa", "objective.eps=[1.5,1.2,1.0]", "objective.exponent_on_nontarget=false"],
    ["+method=pld"],
    ["+method=pld", "objective.top_k=3"],
    ["+method=tgeo"],
    ["+method=tgeo", "divergence=js", "objective.inter_sample=false"],
    ["+method=abkd"],
    ["+method=mcmi", "divergence=rkl"],
]


@pytest.mark.parametrize("overrides", CASES, ids=lambda overrides: " ".join(overrides).replace("+method=", ""))
def test_method_trains_two_steps_end_to_end(overrides: list[str], tmp_path: Path) -> None:
    L.seed_everything(0)
    module, datamodule = build(overrides, tmp_path)
    snapshot = ParameterSnapshot()
    trainer = quick_trainer(max_epochs=2, max_steps=2, limit_val_batches=1, callbacks=[snapshot])
    trainer.fit(module, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    changed = {name for name, p in module.named_parameters() if not torch.equal(p, snapshot.before[name])}
    assert any(name.startswith("model.") for name in changed)
    if overrides[0] in ("+method=ofa", "+method=tgeo"):  # the projectors / the fusion network learn too
        assert any(name.startswith("objective.") for name in changed)


def test_ofa_builds_one_projector_per_student_stage(tmp_path: Path) -> None:
    cnn, datamodule = build(["+method=ofa"], tmp_path)
    quick_trainer(max_steps=1, limit_val_batches=0).fit(cnn, datamodule=datamodule)
    assert list(cnn.objective.projectors) == ["1", "2"]  # SmallCNN has two stages
    vit, datamodule = build(["+method=ofa", "model=digits_cnn_to_tv_vit"], tmp_path)
    assert isinstance(vit.model, TorchvisionClassifier) and vit.model.num_prefix_tokens == 1
    quick_trainer(max_steps=1, limit_val_batches=0).fit(vit, datamodule=datamodule)
    assert [len(p.blocks) for p in vit.objective.projectors.values()] == [3, 2, 1, 1]  # max(4 - k, 1)


def test_tgeo_holds_out_a_tenth_of_the_training_set(tmp_path: Path) -> None:
    module, datamodule = build(["+method=tgeo"], tmp_path)
    quick_trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=datamodule)
    size = len(datamodule.splits["train"])
    assert module.objective.held_out.shape == (size,) and module.objective.held_out.sum().item() == round(0.1 * size)


# --- the MCMI teacher recipe in the teacher cache -----------------------------------------------

TINY = ["trainer.max_epochs=1", "teacher.max_epochs=1", "teacher.mcmi.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.log_every_n_steps=1", "logger=none"]


def run_job(overrides: list[str], tmp_path: Path, name: str) -> dict:
    directory = tmp_path / name
    cfg = compose_train([*overrides, *TINY, f"paths.output_dir={directory}", f"paths.log_dir={tmp_path}"], directory)
    with open_dict(cfg):
        cfg.callbacks = {}
    run(cfg)
    return json.loads((directory / "results.json").read_text())


def test_mcmi_teacher_is_trained_once_and_reused_by_every_student_method(tmp_path: Path) -> None:
    first = run_job(["+method=kd", "teacher.recipe=mcmi"], tmp_path, "kd-mcmi")
    second = run_job(["+method=dkd", "teacher.recipe=mcmi"], tmp_path, "dkd-mcmi")
    preset = run_job(["+method=mcmi"], tmp_path, "mcmi")
    plain = run_job(["+method=kd"], tmp_path, "kd-mle")
    assert [r["teacher"]["source"] for r in (first, second, preset, plain)] == ["trained", "cache", "cache", "cache"]
    assert first["teacher"]["fingerprint"] == second["teacher"]["fingerprint"] == preset["teacher"]["fingerprint"]
    assert plain["teacher"]["fingerprint"] != first["teacher"]["fingerprint"]  # the MLE teacher it started from
    entries = {path.parent.name: path.parent for path in (tmp_path / "teachers").glob("*/teacher.safetensors")}
    assert set(entries) == {first["teacher"]["fingerprint"], plain["teacher"]["fingerprint"]}
    mcmi_metrics = json.loads((entries[first["teacher"]["fingerprint"]] / "metrics.json").read_text())
    mle_metrics = json.loads((entries[plain["teacher"]["fingerprint"]] / "metrics.json").read_text())
    assert mcmi_metrics["base_cmi"] == pytest.approx(mle_metrics["cmi"])  # measured before fine-tuning starts
    assert {"acc", "cmi", "base_cmi"} <= set(first["teacher"]["metrics"]) and "cmi" in plain["teacher"]["metrics"]
    assert first["config"]["teacher"]["recipe"] == "mcmi" and preset["method"] == "mcmi"
    logged = (entries[first["teacher"]["fingerprint"]] / "csv" / "metrics.csv").read_text()
    assert "train/cmi" in logged.splitlines()[0] and "train/cmi_batch" in logged.splitlines()[0]


def test_teacher_fingerprints_separate_the_recipes(tmp_path: Path) -> None:
    """The MLE teacher's fingerprint ignores the recipe keys (so MLE caches stay valid); the MCMI one
    adds the fine-tuning settings."""
    mle = compose_train([], tmp_path)
    tuned = compose_train(["teacher.recipe=mcmi"], tmp_path)
    other_lambda = compose_train(["teacher.recipe=mcmi", "teacher.mcmi.objective.weight=0.25"], tmp_path)
    assert set(teacher_config(mle)["recipe"]) == {"max_epochs", "objective", "optimizer", "scheduler"}
    assert teacher_config(tuned, "mle") == teacher_config(mle) == teacher_config(other_lambda, "mle")
    keys = {fingerprint(teacher_config(cfg)) for cfg in (mle, tuned, other_lambda)}
    assert len(keys) == 3


def test_teacher_recipes_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="teacher.recipe must be one of mle, mcmi, got 'mcmi2'"):
        run_job(["teacher.recipe=mcmi2"], tmp_path, "bad")
    with pytest.raises(ConfigError, match="teacher.ckpt_path=teacher.pt loads a finished teacher, but teacher.recipe=mcmi"):
        run_job(["teacher.recipe=mcmi", "teacher.ckpt_path=teacher.pt"], tmp_path, "both")
