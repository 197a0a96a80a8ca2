"""CIFAR-10/100 read through torchvision's real classes from files in CIFAR's own format; the
DataLoader path and the on-device path give the same batches up to the random augmentation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import TEST_SIZE, TRAIN_SIZE, cifar_root, write_cifar  # noqa: F401  (cifar_root is a fixture)

from kdlab.data import CIFARDataModule
from kdlab.data.cifar import VARIANTS
from kdlab.data.on_device import random_crop_flip
from kdlab.data.order import EpochOrder


def datamodule(root: Path, name: str = "cifar100", **kwargs) -> CIFARDataModule:
    kwargs = {"val_size": 50, "num_workers": 0, "batch_size": 16, "download": False} | kwargs
    dm = CIFARDataModule(name, root=str(root), **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_the_official_files_are_read_and_split(cifar_root: Path, tmp_path: Path, name: str) -> None:
    written = write_cifar(tmp_path / "again", name)  # the same arrays as in cifar_root (same seed)
    dm = datamodule(cifar_root, name)
    assert dm.num_classes == VARIANTS[name].num_classes
    images, labels = dm.splits["test"]
    assert images.dtype == torch.uint8 and images.shape == (TEST_SIZE, 3, 32, 32)
    assert torch.equal(images.reshape(TEST_SIZE, -1), torch.from_numpy(written["test_data"]))  # CIFAR rows are CHW
    assert torch.equal(labels, torch.from_numpy(written["test_labels"]))
    train, val = dm.splits["train"], dm.splits["val"]
    assert len(train[1]) == TRAIN_SIZE - 50 and len(val[1]) == 50
    all_train = torch.cat([train[0], val[0]]).reshape(TRAIN_SIZE, -1)
    assert sorted(map(bytes, all_train.numpy())) == sorted(map(bytes, written["train_data"]))  # a partition
    again = datamodule(cifar_root, name)
    assert torch.equal(again.splits["val"][0], val[0])  # the split depends only on split_seed


def test_val_size_zero_validates_on_the_test_set(cifar_root: Path) -> None:
    dm = datamodule(cifar_root, val_size=0)
    assert len(dm.splits["train"][1]) == TRAIN_SIZE
    assert dm.splits["val"] is dm.splits["test"]


def test_corrupted_files_are_refused_by_torchvision(cifar_root: Path) -> None:
    with open(cifar_root / "cifar-100-python" / "test", "ab") as f:
        f.write(b"x")
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        datamodule(cifar_root)


def test_bad_dataset_settings_fail_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar100 has 100 classes, but num_classes=10"):
        CIFARDataModule("cifar100", num_classes=10, root=str(tmp_path))
    with pytest.raises(ValueError, match="unknown CIFAR dataset 'cifar1000'"):
        CIFARDataModule("cifar1000", root=str(tmp_path))
    with pytest.raises(ValueError, match="val_size must be >= 0"):
        CIFARDataModule("cifar10", root=str(tmp_path), val_size=-1)


def test_too_large_a_validation_split_is_refused(cifar_root: Path) -> None:
    with pytest.raises(ValueError, match="leaves no training images"):
        datamodule(cifar_root, val_size=TRAIN_SIZE)


def normalised(images: torch.Tensor, name: str = "cifar100") -> torch.Tensor:
    variant = VARIANTS[name]
    mean, std = torch.tensor(variant.mean).view(-1, 1, 1), torch.tensor(variant.std).view(-1, 1, 1)
    return (images.double() / 255 - mean) / std


def augmentations_of(image: torch.Tensor) -> torch.Tensor:
    """Every crop + flip of `image` [3, 32, 32] uint8: [9, 9, 2, 3, 32, 32] (top, left, flipped)."""
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    crops = torch.stack([torch.stack([padded[:, t:t + 32, l:l + 32] for l in range(9)]) for t in range(9)])
    return torch.stack([crops, crops.flip(-1)], dim=2)


def which_augmentation(batch_input: torch.Tensor, image: torch.Tensor) -> tuple[int, int, int]:
    """(top, left, flipped) of the unique crop + flip of `image` that `batch_input` is, normalised."""
    candidates = normalised(augmentations_of(image).reshape(-1, 3, 32, 32))
    match = ((candidates - batch_input.double()).abs().amax(dim=(1, 2, 3)) < 1e-5).nonzero().flatten()
    assert len(match) >= 1, "the training input is not a crop + flip of its image"
    top, rest = divmod(int(match[0]), 18)
    return top, *divmod(rest, 2)


@pytest.mark.parametrize("on_device", [False, True])
def test_batches_are_normalised_crops_and_flips_of_their_images(cifar_root: Path, on_device: bool) -> None:
    dm = datamodule(cifar_root, on_device=on_device)
    images, labels = dm.splits["train"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (16, 3, 32, 32) and batch["input"].dtype == torch.float32
    assert torch.equal(batch["label"], labels[batch["index"]])
    for i in range(16):
        which_augmentation(batch["input"][i], images[batch["index"][i]])
    test = next(iter(dm.test_dataloader()))  # evaluation: no augmentation, in order
    test_images, test_labels = dm.splits["test"]
    assert torch.equal(test["index"], torch.arange(16)) and torch.equal(test["label"], test_labels[:16])
    torch.testing.assert_close(test["input"].double(), normalised(test_images[:16]), atol=1e-5, rtol=0)


def test_both_paths_draw_offsets_and_flips_uniformly(cifar_root: Path) -> None:
    """Both paths draw each of the 9 x 9 crop offsets x 2 flips with probability 1/162: a chi-square
    test on 3,240 augmentations of one image by each path."""
    dm = datamodule(cifar_root)
    image = dm.splits["train"][0][0]
    draws = 3240
    transform = dm.train_dataloader().dataset.transform
    variant = VARIANTS["cifar100"]
    mean, std = torch.tensor(variant.mean).view(-1, 1, 1), torch.tensor(variant.std).view(-1, 1, 1)
    torch.manual_seed(0)
    by_loader = torch.stack([((transform(image) * std + mean) * 255).round().to(torch.uint8) for _ in range(draws)])
    on_device = random_crop_flip(image.expand(draws, -1, -1, -1), 4, torch.Generator().manual_seed(0))
    position = {bytes(c.numpy()): i for i, c in enumerate(augmentations_of(image).reshape(162, -1))}
    assert len(position) == 162  # the random image makes every augmentation distinct
    expected = draws / 162
    for crops in (by_loader, on_device):
        counts = np.bincount([position[bytes(c.numpy())] for c in crops.reshape(draws, -1)], minlength=162)
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 230, chi2  # 161 degrees of freedom: P(chi2 > 230) < 0.001 under uniformity
        assert abs(counts[1::2].sum() / draws - 0.5) < 0.03  # flipped half of the time


def test_on_device_order_reshuffles_every_epoch_and_shards_across_processes() -> None:
    order = EpochOrder(10, shuffle=True, seed=3)
    first = order.indices()
    order.set_epoch(1)
    assert sorted(first.tolist()) == list(range(10)) and not torch.equal(first, order.indices())
    order.set_epoch(0)
    assert torch.equal(first, order.indices())
    shards = [EpochOrder(10, shuffle=True, seed=3, rank=r, world_size=3, drop_uneven=True) for r in range(3)]
    parts = [shard.indices() for shard in shards]
    assert [len(p) for p in parts] == [3, 3, 3] and len(set(torch.cat(parts).tolist())) == 9
    evaluation = [EpochOrder(10, shuffle=False, seed=0, rank=r, world_size=3) for r in range(3)]
    assert sorted(torch.cat([e.indices() for e in evaluation]).tolist()) == list(range(10))
