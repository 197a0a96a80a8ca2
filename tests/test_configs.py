"""Every YAML under conf/ composes, resolves and builds its objects: no preset may rot."""

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from image_files import labelled_arrays, write_arrays, write_class_folders
from text_files import write_corpus
from kdlab.run import build_objective, composed_method
from kdlab.train import method_overrides
from kdlab.validate import resolved

CONF = Path(__file__).resolve().parents[1] / "kdlab" / "conf"
# Recipes are added with `+recipe=option`; every other group (method included) is chosen with `group=option`.
ADDED_GROUPS = ("recipe",)
HF_LOADERS = ("kdlab.models.hf.",)  # Hugging Face models by hub name: building one would download it
# Presets of a user's own files: the overrides that give them tiny files written in a directory.
DATA_FILES = {
    "dataset=image_folder": lambda root: [f"dataset.datamodule.root={write_class_folders(root / 'images')}"],
    "dataset=image_arrays": lambda root: [f"dataset.datamodule.path={write_arrays(root / 'images.npz', *labelled_arrays())}"],
    "dataset=text_classification": lambda root: [f"dataset.datamodule.data_files={write_corpus(root / 'text.csv')}", "dataset.datamodule.label_column=topic"],
}
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ADDED_GROUPS and not p.name.startswith("_"))


def compose_train(overrides: list[str], tmp_path: Path) -> DictConfig:
    """The job config `kdlab train OVERRIDES` runs (`+method=X` read as `kdlab train` reads it)."""
    GlobalHydra.instance().clear()
    with initialize_config_module("kdlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*method_overrides(overrides), f"hydra.run.dir={tmp_path}"], return_hydra_config=True)
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
    # A file in a group's sub-folder (a base such as experiment/base/cifar100_table) is composed by the presets that name it.
    texts = "\n".join(path.read_text() for path in CONF.glob("*/*.yaml"))
    for nested in CONF.glob("*/*/*.yaml"):
        named = f"{nested.parent.name}/{nested.stem}" in texts or f"{nested.parent.name}: {nested.stem}" in texts
        assert named, f"{nested.relative_to(CONF)} is named by no preset"


@pytest.mark.parametrize("override", every_override())
def test_config_composes_resolves_and_builds(override: str, tmp_path: Path) -> None:
    cfg = compose_train([override, *DATA_FILES.get(override, lambda _: [])(tmp_path)], tmp_path)
    resolved(cfg)  # every interpolation resolves, as the run resolves them (with kdlab's resolvers)
    build_objective(cfg, composed_method())  # the objective and its divergence, as kdlab.run builds them
    try:
        instantiate(cfg.dataset.datamodule)
    except InstantiationException as error:  # an optional extra this machine lacks (e.g. VADER for experiment=sentiment_smollm2)
        if "pip install 'kdlab[examples]'" not in str(error):
            raise
        pytest.skip(str(error.__cause__ or error))
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
    """`kdlab train`, `kdlab train +method=kd` and `kdlab train method=kd` compose the same job."""
    plain = OmegaConf.to_container(compose_train([], tmp_path), resolve=True)
    for spelling in ("+method=kd", "method=kd", "++method=kd"):
        assert OmegaConf.to_container(compose_train([spelling], tmp_path), resolve=True) == plain, spelling
    assert plain["objective"]["_target_"] == "kdlab.objectives.hinton_kd.HintonKD"
    assert plain["module"]["_target_"] == "kdlab.modules.DistillModule"
    assert plain["divergence"] == {"name": "fkl", "drop_teacher_entropy": False}


def test_scratch_replaces_the_objective_and_has_no_divergence(tmp_path: Path) -> None:
    cfg = compose_train(["+method=scratch"], tmp_path)
    assert OmegaConf.to_container(cfg.objective) == {"_target_": "kdlab.objectives.cross_entropy.CrossEntropy", "label_smoothing": 0.0}
    assert cfg.module._target_ == "kdlab.modules.TeacherModule"
    assert OmegaConf.to_container(cfg.divergence) == {"name": None}


def test_run_name_follows_the_choices(tmp_path: Path) -> None:
    assert compose_train(["+method=scratch", "seed=3"], tmp_path).run_name == "scratch-none-digits_cnn-digits-s3"
    assert compose_train(["+method=dkd", "divergence=kl"], tmp_path).run_name == "dkd-fkl-digits_cnn-digits-s0"  # the canonical name
    assert compose_train(["experiment=pref_synthetic"], tmp_path).run_name == "fdpo-js-sft_gpt2-pref_synthetic-s0"


def test_a_preset_default_is_overridden_without_plus(tmp_path: Path) -> None:
    """The presets hold every default (so `--cfg job` shows them): `objective.temperature=2` needs no `+`."""
    assert compose_train(["objective.temperature=2"], tmp_path).objective.temperature == 2
    assert compose_train(["+method=dpo", "module.samples=8"], tmp_path).module.samples == 8
