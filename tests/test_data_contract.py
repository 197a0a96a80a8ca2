"""docs/data.md's custom datamodule, run as the page writes it: its file, its dataset option, its command."""

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from conftest import kdlab
from hydra.utils import instantiate
from omegaconf import OmegaConf

import kdlab.data as data_package

DOC = Path(__file__).resolve().parents[1] / "docs" / "data.md"
TINY = ["trainer.max_epochs=1", "teacher.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1", "logger=none"]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """The user's directory: `my_data.py` and `conf/dataset/blobs.yaml`, copied from the page."""
    (python,), (dataset,) = blocks("python"), blocks("yaml")
    (tmp_path / "my_data.py").write_text(python)
    name = re.search(r"`conf/dataset/(\w+)\.yaml`", DOC.read_text()).group(1)
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / f"{name}.yaml").write_text(dataset)
    return tmp_path


def test_the_base_and_the_dataset_are_public() -> None:
    assert {"SplitDataModule", "IndexedTensorDataset"} <= set(data_package.__all__)


def test_the_example_yields_the_labelled_contract(user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_dir))
    node = OmegaConf.create({"dataset": OmegaConf.load(user_dir / "conf" / "dataset" / "blobs.yaml")}).dataset
    datamodule = instantiate(node.datamodule)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert datamodule.batches == "labelled" and set(batch) == {"input", "label", "index"}
    assert batch["input"].shape == (node.batch_size, node.in_channels, 8, 8) and batch["input"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and int(batch["label"].max()) < node.num_classes
    indices = torch.cat([b["index"] for b in datamodule.train_dataloader()])
    assert sorted(indices.tolist()) == list(range(len(datamodule.split_dataset("train"))))


@pytest.mark.slow
def test_the_documented_command_trains_on_the_example(user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (command,) = [line for block in blocks("bash") for line in block.splitlines() if "kdlab train" in line]
    words = shlex.split(command)
    env = dict(word.split("=", 1) for word in words[: words.index("kdlab")])
    for name, value in env.items():
        monkeypatch.setenv(name, str((user_dir / value).resolve()) if name == "PYTHONPATH" else value)
    arguments = words[words.index("train") + 1 :]
    arguments = [str(user_dir / a) if arguments[i - 1 : i] == ["--config-dir"] else a for i, a in enumerate(arguments)]
    outputs = user_dir / "outputs"
    kdlab("train", "-m", *arguments, "+method=teacher,kd,scratch", *TINY, outputs=outputs)
    results = [json.loads(path.read_text()) for path in (outputs / "multirun").rglob("results.json")]
    assert sorted(r["method"] for r in results) == ["kd", "scratch", "teacher"]
    assert {(r["status"], r["dataset"], r["config"]["dataset"]["num_classes"]) for r in results} == {("completed", "blobs", 3)}
