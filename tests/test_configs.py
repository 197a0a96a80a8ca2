"""Every YAML under conf/ composes, resolves and builds its objects: no preset may rot."""

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

CONF = Path(__file__).resolve().parents[1] / "kdlab" / "conf"
# Groups whose options are chosen as `group=option`; `method` and `recipe` are added as `+method=option`.
ADDED_GROUPS = ("method", "recipe")
HF_LOADERS = ("kdlab.models.hf.",)  # Hugging Face models by hub name: building one would download it
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ADDED_GROUPS and not p.name.startswith("_"))


def compose_train(overrides: list[str], tmp_path: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module("kdlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={tmp_path}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # lets `${hydra:...}` interpolations resolve
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def every_override() -> list[str]:
    options = [f"{group}={path.stem}" for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
    options += [f"+{group}={path.stem}" for group in ADDED_GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
    return options


def test_every_config_file_is_reached() -> None:
    reached = {override.split("=")[0].lstrip("+") + "/" + override.split("=")[1] for override in every_override()}
    on_disk = {f"{p.parent.name}/{p.stem}" for p in CONF.glob("*/*.yaml")}
    assert on_disk == reached


@pytest.mark.parametrize("override", every_override())
def test_config_composes_resolves_and_builds(override: str, tmp_path: Path) -> None:
    cfg = compose_train([override], tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert callable(instantiate(cfg.divergence))
    instantiate(cfg.objective)
    instantiate(cfg.dataset.datamodule)
    for role in ("teacher", "student"):
        model = cfg.model[role]
        if model is not None and model._target_.startswith(HF_LOADERS):  # they load weights: check the call, load nothing
            config = OmegaConf.to_container(model, resolve=True)
            inspect.signature(get_method(config.pop("_target_"))).bind(**config)
            continue
        if model is None or cfg.dataset.num_classes is None or cfg.dataset.in_channels is None:  # text data builds its LMs in setup
            continue
        instantiate(model)
    for logger in cfg.logger.values():
        assert "_target_" in logger


def test_default_run_is_hinton_kd(tmp_path: Path) -> None:
    """`kdlab train` and `kdlab train +method=kd` compose the same job."""
    plain = OmegaConf.to_container(compose_train([], tmp_path), resolve=True)
    kd = OmegaConf.to_container(compose_train(["+method=kd"], tmp_path), resolve=True)
    assert plain == kd
    assert plain["objective"]["_target_"] == "kdlab.objectives.HintonKD"
    assert plain["module"]["_target_"] == "kdlab.modules.DistillModule"


def test_scratch_replaces_the_objective(tmp_path: Path) -> None:
    cfg = compose_train(["+method=scratch"], tmp_path)
    assert OmegaConf.to_container(cfg.objective) == {"_target_": "kdlab.objectives.CrossEntropy", "label_smoothing": 0.0}
    assert cfg.module._target_ == "kdlab.modules.TeacherModule"


def test_run_name_follows_the_choices(tmp_path: Path) -> None:
    cfg = compose_train(["+method=scratch", "seed=3"], tmp_path)
    assert cfg.run_name == "scratch-fkl-digits_cnn-digits-s3"
