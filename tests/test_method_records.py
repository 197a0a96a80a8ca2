"""One source of truth for the divergence: every method preset x a divergence its objective accepts
and one it refuses, built exactly as `kdlab.run` builds it; the record is checked against the built
objective, the refusal against the methods it suggests. The presets are read from conf/method/: a
new preset is swept without being listed here."""

import functools
import json
import re
import tempfile
from pathlib import Path

import pytest
from hydra.utils import get_class
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from test_configs import compose_train

from kdlab.conf import label
from kdlab.divergences import REGISTRY, get, parameters
from kdlab.errors import ConfigError
from kdlab.methods import catalogue, method_names
from kdlab.objectives.base import FixedDivergence, NoDivergence, OpenSlot
from kdlab.run import build_objective, qualified_name, run

SLOTS = {method.name: method.slot for method in catalogue()}


@functools.cache
def composed(method: str, divergence: str | None = "preset") -> DictConfig:
    """The job of `kdlab train +method=METHOD [divergence=DIVERGENCE]` ("preset": the preset's own), composed once."""
    overrides = [f"+method={method}"] + ([] if divergence == "preset" else [f"divergence={label(divergence)}"])
    cfg = compose_train(overrides, Path(tempfile.mkdtemp()))
    OmegaConf.resolve(cfg)  # now, while Hydra's runtime config (the run name's method) is this job's
    return cfg


def accepted(method: str) -> str | None:
    """A divergence the method's objective takes (for an open slot, another one than its preset's default
    when the slot has another: ABKD's takes only `ab`)."""
    slot = SLOTS[method]
    if isinstance(slot, NoDivergence):
        return None
    if isinstance(slot, FixedDivergence):
        return slot.name
    names = slot.names or tuple(REGISTRY)
    default = composed(method).divergence.name
    return next((name for name in names if name != default), default)


def refused(method: str) -> str | None:
    """A divergence the method's objective does not take: the first registered one it refuses, else none."""
    slot = SLOTS[method]
    return next((name for name in REGISTRY if not slot.accepts(name, parameters(name))), None)


@pytest.mark.parametrize("method", method_names())
def test_the_catalogue_reads_what_hydra_composes(method: str) -> None:
    """The catalogue's reading of a preset (its objective and regime) is Hydra's composition of it."""
    (entry,) = [m for m in catalogue() if m.name == method]
    cfg = composed(method)
    assert entry.objective is get_class(cfg.objective._target_)
    assert entry.regime_target == cfg.module._target_


def test_every_preset_is_swept() -> None:
    assert set(SLOTS) == set(method_names()) and len(SLOTS) >= 20
    assert {type(slot) for slot in SLOTS.values()} == {NoDivergence, FixedDivergence, OpenSlot}


@pytest.mark.parametrize("method", method_names())
def test_the_record_is_what_the_objective_computes_with(method: str, tmp_path: Path) -> None:
    name = accepted(method)
    cfg = composed(method, name)
    objective, record = build_objective(cfg, method)
    slot = type(objective).divergence_slot
    if isinstance(slot, OpenSlot):  # the Divergence its forward calls is the one built from the divergence group
        params = {key: value for key, value in OmegaConf.to_container(cfg.divergence).items() if key != "name"}
        assert objective.divergence == get(name, **params)
        assert (record["divergence"], record["divergence_params"]) == (objective.divergence.name, dict(objective.divergence.params))
        assert record["objective"]["arguments"]["divergence"] == objective.divergence.record()
    elif isinstance(slot, FixedDivergence):
        assert (record["divergence"], record["divergence_params"]) == (slot.name, dict(get(slot.name).params))
        assert "divergence" not in record["objective"]["arguments"]
    else:
        assert (record["divergence"], record["divergence_params"]) == (None, None)
        assert "divergence" not in record["objective"]["arguments"]
    assert record["divergence"] == name
    assert record["objective"]["class"] == qualified_name(type(objective)) and get_class(cfg.objective._target_) is type(objective)
    expected = {key: value for key, value in OmegaConf.to_container(cfg.objective, resolve=True).items() if key != "_target_"}
    assert {key: value for key, value in record["objective"]["arguments"].items() if key != "divergence"} == expected
    assert cfg.run_name.startswith(f"{method}-{label(record['divergence'])}-")


@pytest.mark.parametrize("method", method_names())
def test_a_refused_divergence_fails_naming_the_methods_that_take_it(method: str, tmp_path: Path) -> None:
    name = refused(method)
    cfg = composed(method, name)
    with pytest.raises(ConfigError) as refusal:
        build_objective(cfg, method)
    message = str(refusal.value)
    assert message.startswith(f"+method={method} ") and f"divergence={label(name)} was asked" in message
    assert SLOTS[method].describe().split(" ")[0] in message  # what the method takes
    suggested = re.search(r"use \+method=([\w|]+)|that do: \+method=([\w|]+)", message)
    if suggested is None:
        assert "no method takes" in message
        return
    for other in (suggested.group(1) or suggested.group(2)).split("|"):
        build_objective(composed(other, name), other)


def test_the_suggestions_are_the_methods_of_the_same_regime(tmp_path: Path) -> None:
    def refusal(overrides: list[str]) -> str:
        cfg = compose_train(overrides, tmp_path)
        with pytest.raises(ConfigError) as error:
            build_objective(cfg, overrides[0].removeprefix("+method="))
        return str(error.value)

    assert refusal(["+method=dpo", "divergence=js"]).endswith("for divergence=js use +method=fdpo")
    assert refusal(["+method=nkd", "divergence=js"]).endswith("for divergence=js use +method=dkd|kd|mcmi|nd|sinkd|tgeo")
    assert "fixes its divergence to rkl" in refusal(["+method=ipo", "divergence=fkl"])
    assert refusal(["+method=tdpo", "divergence.drop_teacher_entropy=true"]).endswith("drop divergence.drop_teacher_entropy=True")
    assert "takes divergence=rkl|fkl|js|alpha" in refusal(["+method=fdpo", "divergence=tvd"])


def test_a_refused_divergence_fails_before_any_data_or_model_is_built(tmp_path: Path) -> None:
    cfg = compose_train(["+method=nkd", "divergence=js", "logger=none", f"paths.output_dir={tmp_path / 'run'}",
                         f"paths.log_dir={tmp_path}", "paths.data_dir=/nonexistent"], tmp_path)
    with pytest.raises(ConfigError, match="use \\+method=dkd\\|kd\\|mcmi\\|nd\\|sinkd\\|tgeo"):
        run(cfg)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (record["status"], record["method"], record["divergence"], record["objective"]) == ("failed", "nkd", "js", None)
    assert not (tmp_path / "teachers").exists() and not (tmp_path / "run" / "checkpoints").exists()


class TagsLogger(Logger):
    """A logger that keeps the tags `kdlab.run` gave it (in place of W&B)."""

    built: list["TagsLogger"] = []

    def __init__(self, tags: list[str], **_: object) -> None:
        super().__init__()
        self.tags = tags
        self.hyperparameters: dict = {}
        TagsLogger.built.append(self)

    name, version = "tags", "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.hyperparameters = dict(params)

    def log_metrics(self, metrics, step=None) -> None:
        pass


def test_results_tags_and_hyperparameters_come_from_the_built_objective(tmp_path: Path) -> None:
    """A method without a slot (scratch) trained two steps: results.json, the W&B tags and the logged
    record say none; the run directory's name says none."""
    cfg = compose_train(["+method=scratch", "logger=wandb", "logger.wandb._target_=test_method_records.TagsLogger",
                         "trainer.max_steps=2", "trainer.max_epochs=1", "~callbacks.progress_bar",
                         f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}"], tmp_path)
    TagsLogger.built.clear()
    run(cfg)
    record = json.loads((tmp_path / "results.json").read_text())
    assert (record["method"], record["divergence"], record["divergence_params"]) == ("scratch", None, None)
    assert record["regime"] == "kdlab.modules.teacher.TeacherModule"
    assert record["objective"] == {"class": "kdlab.objectives.cross_entropy.CrossEntropy", "arguments": {"label_smoothing": 0.0}}
    assert record["run_name"] == cfg.run_name == "scratch-none-digits_cnn-digits-s0"
    (logger,) = TagsLogger.built
    assert logger.tags == ["scratch", "none", "digits_cnn", "digits", "seed0"]
    assert logger.hyperparameters["record"]["divergence"] is None and logger.hyperparameters["record"]["method"] == "scratch"
