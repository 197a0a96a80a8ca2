"""Tiny CIFAR-10/100 sets written in CIFAR's own on-disk format (the pickled python batches), so
that tests load them through the real `torchvision.datasets.CIFAR10/100` classes.

torchvision checks the md5 sum of every file when it builds a dataset (`_check_integrity` and
`_load_meta`, with or without `download`); the `cifar_root` fixture points those sums at the files
written here, so the same check runs on them.
"""

import hashlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets

TRAIN_SIZE, TEST_SIZE = 200, 100


def write_cifar(root: Path, name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Write random images and labels as `cifar-10-batches-py/` (5 train batches, `test_batch`,
    `batches.meta`) or `cifar-100-python/` (`train`, `test`, `meta`) under `root`. Returns the
    written arrays: `{"train_data", "train_labels", "test_data", "test_labels"}`, data `[N, 3072]` uint8."""
    rng = np.random.default_rng(seed)
    num_classes = 10 if name == "cifar10" else 100
    arrays = {
        "train_data": rng.integers(0, 256, (TRAIN_SIZE, 3072), dtype=np.uint8),
        "train_labels": rng.integers(0, num_classes, TRAIN_SIZE),
        "test_data": rng.integers(0, 256, (TEST_SIZE, 3072), dtype=np.uint8),
        "test_labels": rng.integers(0, num_classes, TEST_SIZE),
    }
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def dump(file: str, content: dict) -> None:
        with open(folder / file, "wb") as f:
            pickle.dump(content, f, protocol=2)

    train_files = [file for file, _ in cls.train_list]
    for file, data, labels in zip(train_files, np.array_split(arrays["train_data"], len(train_files)),
                                  np.array_split(arrays["train_labels"], len(train_files)), strict=True):
        dump(file, {"batch_label": file, label_key: labels.tolist(), "data": data,
                    "filenames": [f"{file}_{i}.png" for i in range(len(labels))]})
    dump(cls.test_list[0][0], {"batch_label": "test", label_key: arrays["test_labels"].tolist(),
                               "data": arrays["test_data"], "filenames": [f"test_{i}.png" for i in range(TEST_SIZE)]})
    dump(cls.meta["filename"], {cls.meta["key"]: [f"class_{c}" for c in range(num_classes)]})
    return arrays


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust_written_files(monkeypatch: pytest.MonkeyPatch, root: Path, name: str) -> None:
    """Make torchvision's md5 checks of `name` expect the files written under `root`."""
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / cls.base_folder
    monkeypatch.setattr(cls, "train_list", [[file, _md5(folder / file)] for file, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[file, _md5(folder / file)] for file, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


def _tiny_cifar_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("cifar10", "cifar100"):
        write_cifar(root, name)
        trust_written_files(monkeypatch, root, name)
    return root


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding both tiny sets, trusted by torchvision's checks for this test."""
    return _tiny_cifar_root(tmp_path / "data", monkeypatch)


@pytest.fixture(scope="module")
def module_cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same, shared by the tests of a module (runs that share it also share cached teachers)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _tiny_cifar_root(tmp_path_factory.mktemp("cifar") / "data", monkeypatch)
