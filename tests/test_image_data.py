"""A user's own images (`dataset=image_folder`, `dataset=image_arrays`, kdlab.data.images): real tiny files
written here (PNGs by PIL in both ImageFolder layouts, .npz/.pt/.npy arrays), read as kdlab reads them."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import CLASSES, labelled_arrays, random_images, write_arrays, write_class_folders, write_split_folders
from omegaconf import DictConfig
from PIL import Image

from kdlab.data import ImageArrayDataModule, ImageFolderDataModule
from kdlab.data.images import ImageDataModule, stratified_split
from kdlab.errors import ConfigError, DataError, KdlabError
from kdlab.models import SmallImageNet
from kdlab.validate import validate


def batches(datamodule: ImageDataModule, split: str) -> dict[str, torch.Tensor]:
    """Every batch of one split's loader, concatenated: `{"input": [N, C, H, W], "label": [N], "index": [N]}`."""
    loader = getattr(datamodule, f"{split}_dataloader")()
    parts = list(loader)
    return {key: torch.cat([batch[key] for batch in parts]) for key in parts[0]}


def message(datamodule: ImageDataModule) -> str:
    with pytest.raises(KdlabError) as error:
        datamodule.setup()
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("layout", ["one folder", "train/val/test"])
def test_folders_give_the_batch_contract_and_infer_the_data(layout: str, tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "images") if layout == "one folder" else write_split_folders(tmp_path / "images")
    datamodule = ImageFolderDataModule(root=str(root), batch_size=5)
    assert (datamodule.num_classes, datamodule.in_channels, datamodule.image_size) == (3, 3, [6, 6])
    datamodule.setup()
    sizes = {split: len(datamodule.split_dataset(split)) for split in ("train", "val", "test")}
    assert sizes == ({"train": 12, "val": 3, "test": 3} if layout == "one folder" else {"train": 12, "val": 6, "test": 6})
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input"].shape == (5, 3, 6, 6) and batch["input"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["index"].shape == (5,)
    assert set(batches(datamodule, "test")["label"].tolist()) == {0, 1, 2}


def test_grey_images_are_one_channel_and_size_resizes_them(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "grey", shape=(5, 7))
    datamodule = ImageFolderDataModule(root=str(root), size=[4, 4], batch_size=4)
    assert (datamodule.in_channels, datamodule.image_size) == (1, [4, 4])
    assert SmallImageNet(datamodule.num_classes, datamodule.in_channels, [4, 8])(torch.zeros(2, 1, 4, 4)).shape == (2, 3)


def test_normalisation_statistics_come_from_the_train_split_only(tmp_path: Path) -> None:
    root = write_split_folders(tmp_path / "images")
    datamodule = ImageFolderDataModule(root=str(root))
    datamodule.setup()

    def pixels(split: str) -> np.ndarray:  # [N, H, W, C] in [0, 1], read plainly with PIL
        return np.stack([np.asarray(Image.open(path)) for path in sorted((root / split).glob("*/*.png"))]) / 255.0

    train = pixels("train")
    np.testing.assert_allclose(datamodule.mean.numpy(), train.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(datamodule.std.numpy(), train.std(axis=(0, 1, 2)), rtol=1e-6)
    everything = np.concatenate([train, pixels("val"), pixels("test")])
    assert not np.allclose(datamodule.mean.numpy(), everything.mean(axis=(0, 1, 2)))
    inputs = batches(datamodule, "val")["input"]
    expected = (pixels("val") - train.mean(axis=(0, 1, 2))) / train.std(axis=(0, 1, 2))
    np.testing.assert_allclose(np.sort(inputs.permute(0, 2, 3, 1).numpy().ravel()), np.sort(expected.ravel()), atol=1e-5)


def test_the_stratified_split_is_fixed_by_its_seed(tmp_path: Path) -> None:
    labels = torch.arange(60) % 3
    first, again, other = (stratified_split(labels, 0.2, 0.2, seed, "x") for seed in (0, 0, 1))
    assert all(torch.equal(first[split], again[split]) for split in first)
    assert not torch.equal(first["test"], other["test"])
    assert sorted(torch.cat(list(first.values())).tolist()) == list(range(60))
    assert [int((labels[first["val"]] == c).sum()) for c in range(3)] == [4, 4, 4]
    root = write_class_folders(tmp_path / "images")
    datamodules = [ImageFolderDataModule(root=str(root), split_seed=7) for _ in range(2)]
    for datamodule in datamodules:
        datamodule.setup()
    assert torch.equal(*(batches(datamodule, "test")["input"] for datamodule in datamodules))


def test_augmentation_changes_training_batches_only(tmp_path: Path) -> None:
    path = write_arrays(tmp_path / "images.npz", *labelled_arrays(n=30))
    plain = ImageArrayDataModule(path=str(path), batch_size=64)
    augmented = ImageArrayDataModule(path=str(path), batch_size=64, augment={"random_crop_padding": 2, "horizontal_flip": True})
    for datamodule in (plain, augmented):
        datamodule.setup()
    for split in ("val", "test"):
        assert torch.equal(batches(plain, split)["input"], batches(augmented, split)["input"])
    train = batches(augmented, "train")
    assert torch.equal(train["index"], batches(plain, "train")["index"])  # the same order, other pixels
    assert not torch.equal(train["input"], batches(plain, "train")["input"])
    assert torch.equal(train["input"], batches(augmented, "train")["input"])  # each sample's draw is seeded


@pytest.mark.parametrize("suffix", ["npz", "pt", "npy"])
@pytest.mark.parametrize(("shape", "keys"), [((6, 6), ("images", "labels")), ((6, 6, 3), ("x", "y")), ((3, 6, 6), ("images", "labels"))])
def test_arrays_in_every_file_kind_and_layout(suffix: str, shape: tuple[int, ...], keys: tuple[str, str], tmp_path: Path) -> None:
    images, labels = labelled_arrays(shape=shape)
    path = write_arrays(tmp_path / f"images.{suffix}", images.astype(np.float32) / 255 if suffix == "pt" else images, labels, keys)
    datamodule = ImageArrayDataModule(path=str(path), labels_path=str(tmp_path / "images_labels.npy") if suffix == "npy" else None)
    channels = 1 if len(shape) == 2 else 3
    assert (datamodule.num_classes, datamodule.in_channels, datamodule.image_size) == (3, channels, [6, 6])
    datamodule.setup()
    assert batches(datamodule, "train")["input"].shape == (12, channels, 6, 6)


def write_bad(kind: str, root: Path) -> ImageDataModule:
    """A datamodule on one kind of bad input, written under `root`."""
    if kind == "no images":
        (root / "empty" / "cat").mkdir(parents=True)
        return ImageFolderDataModule(root=str(root / "empty"))
    if kind == "one class":
        return ImageFolderDataModule(root=str(write_class_folders(root / "one", classes=("cat",))))
    if kind in ("mixed channels", "mixed sizes"):
        folder = write_class_folders(root / "mixed")
        Image.fromarray(random_images(1, (6, 6) if kind == "mixed channels" else (8, 8, 3))[0]).save(folder / "dog" / "odd.png")
        return ImageFolderDataModule(root=str(folder))
    if kind == "labels outside":
        return ImageArrayDataModule(path=str(write_arrays(root / "a.npz", *labelled_arrays())), num_classes=2)
    if kind == "no root":
        return ImageFolderDataModule()
    if kind == "missing root":
        return ImageFolderDataModule(root=str(root / "nowhere"))
    if kind == "no path":
        return ImageArrayDataModule()
    if kind == "missing path":
        return ImageArrayDataModule(path=str(root / "nowhere.npz"))
    images, labels = labelled_arrays()
    return ImageArrayDataModule(path=str(write_arrays(root / "a.npz", images, labels, keys=("pixels", "targets"))))


BAD = {
    "no images": (DataError, "{root}/empty has no image files in class folders: put them in one sub-folder per class, {root}/empty/<class>/<image>.png"),
    "one class": (DataError, "{root}/one has one class only (label 0): a classifier needs at least two classes of images"),
    "mixed channels": (DataError, "{root}/mixed/cat/0.png has 3 channel(s) but {root}/mixed/dog/odd.png has 1: every image needs the same channels"),
    "mixed sizes": (DataError, "is 6x6 but {root}/mixed/dog/odd.png is 8x8: set dataset.datamodule.size=[H,W] to resize every image to one size"),
    "labels outside": (DataError, "{root}/a.npz: label 2 at row 2 is outside [0, 2) (dataset.datamodule.num_classes=2): fix the labels, "
                                  "or set dataset.datamodule.num_classes=3 (null: the largest label + 1)"),
    "no root": (ConfigError, "dataset.datamodule.root is not set: give the folder of your images, dataset.datamodule.root=DIR (docs/images.md)"),
    "missing root": (DataError, "dataset.datamodule.root={root}/nowhere is not a folder: give the folder of your images (docs/images.md)"),
    "no path": (ConfigError, "dataset.datamodule.path is not set: give the file of your arrays, dataset.datamodule.path=FILE (docs/images.md)"),
    "missing path": (DataError, "dataset.datamodule.path={root}/nowhere.npz does not exist: give the file of your arrays (docs/images.md)"),
    "wrong keys": (DataError, "{root}/a.npz holds pixels, targets: it needs the arrays 'images' and 'labels' (or 'x' and 'y')"),
}


@pytest.mark.parametrize("kind", BAD)
def test_each_bad_input_is_one_line_naming_the_file_or_key_and_the_fix(kind: str, tmp_path: Path) -> None:
    error, expected = BAD[kind]
    text = message(write_bad(kind, tmp_path))
    assert expected.format(root=tmp_path) in text
    with pytest.raises(error):
        write_bad(kind, tmp_path / "again").read()


def test_the_presets_infer_the_models_and_check_overrides_before_any_work(tmp_path: Path) -> None:
    from test_bad_inputs import compose_run

    def compose_images(overrides: list[str]) -> DictConfig:
        return compose_run(["model=small_images", "logger=none", *overrides], tmp_path / "run")

    root = write_class_folders(tmp_path / "images", shape=(6, 6))
    cfg = compose_images(["dataset=image_folder", f"dataset.datamodule.root={root}"])
    validate(cfg, "kd")
    assert (cfg.dataset.num_classes, cfg.dataset.in_channels, list(cfg.dataset.image_size)) == (3, 1, [6, 6])
    assert cfg.model.student.num_classes == 3 and cfg.model.teacher.in_channels == 1
    for key, value, found in (("num_classes", 5, 3), ("in_channels", 3, 1)):
        with pytest.raises(ConfigError, match=rf"^dataset.{key}={value}, but the data has {found}: drop the override .* set dataset.{key}={found}$"):
            validate(compose_images(["dataset=image_folder", f"dataset.datamodule.root={root}", f"dataset.{key}={value}"]), "kd")
    with pytest.raises(ConfigError, match=r"^dataset.datamodule.path is not set"):  # raised as it is, not as "cannot be resolved"
        validate(compose_images(["dataset=image_arrays"]), "kd")
    write_class_folders(tmp_path / "other", shape=(6, 6), seed=5)
    other = compose_images(["dataset=image_folder", f"dataset.datamodule.root={tmp_path / 'other'}"])
    assert other.dataset.fingerprint != cfg.dataset.fingerprint  # a cached teacher is never reused for other images


def test_train_on_an_image_folder_end_to_end(tmp_path: Path) -> None:
    from conftest import kdlab

    root = write_class_folders(tmp_path / "images")
    outputs = tmp_path / "outputs"
    kdlab("train", "dataset=image_folder", f"dataset.datamodule.root={root}", "model=small_images", "trainer.max_epochs=1",
          "teacher.max_epochs=1", "logger=none", outputs=outputs, timeout=120)
    (path,) = outputs.glob("runs/*/*/results.json")
    record = json.loads(path.read_text())
    assert record["status"] == "completed" and record["dataset"] == "image_folder" and record["model"] == "small_images"
    assert record["config"]["dataset"]["num_classes"] == len(CLASSES) and record["config"]["dataset"]["in_channels"] == 3
