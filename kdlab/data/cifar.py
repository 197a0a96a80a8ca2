"""CIFAR-10 and CIFAR-100 through torchvision, with the standard KD recipe's augmentation.

Train: random 32x32 crop of the image zero-padded by 4, horizontal flip with probability 1/2,
per-channel normalisation; val/test: normalisation only. Batches are dicts: `input`
`[B, 3, 32, 32]` float32, `label` `[B]` int64, `index` `[B]` (position in the split).
"""

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms import v2

from kdlab.data.on_device import DeviceBatches
from kdlab.data.order import EpochOrder, run_seed
from kdlab.data.views import TeacherViews, ViewBatches, ViewSource, replay_loader

PADDING = 4


@dataclass(frozen=True)
class CIFARVariant:
    dataset: type[datasets.CIFAR10]
    num_classes: int
    mean: tuple[float, float, float]  # per-channel statistics of the training images, in [0, 1]
    std: tuple[float, float, float]


VARIANTS = {
    "cifar10": CIFARVariant(datasets.CIFAR10, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # the values of RepDistiller / mdistiller, with which the CIFAR-100 KD tables were made
    "cifar100": CIFARVariant(datasets.CIFAR100, 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


class TransformedImages(Dataset):
    """uint8 images `[N, 3, H, W]` and labels `[N]`; items `{"input": transform(image), "label", "index"}`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """The item at `key`: an index, or `(index, seed)` from a keyed `EpochOrder`, whose random
        transform is then drawn from the CPU generator seeded with `seed` (and the generator put back)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None:
            image = self.transform(self.images[index])
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                image = self.transform(self.images[index])
        return {"input": image, "label": self.labels[index], "index": torch.tensor(index)}


class CIFARDataModule(L.LightningDataModule):
    """CIFAR-10/100 from `root` (torchvision's files; downloaded there when `download` and missing).

    Splits: `train` = the official training set less `val_size` images drawn at random with
    `split_seed` (the same for every run), `val` = those images, `test` = the official test set.
    `val_size=0` trains on all 50,000 images and validates on the test set — the protocol of the
    RepDistiller / mdistiller CIFAR-100 tables.

    `on_device=True` keeps each split as one uint8 tensor on the training device and crops, flips
    and normalises batches there (`kdlab.data.on_device`): no workers, an epoch bounded by the
    models. The default DataLoader path applies the same transforms per image in `num_workers` processes.
    With `teacher_views` set (`kdlab.teacher_outputs`), training batches replay the cached views instead
    (`kdlab.data.views.ViewBatches`, on the training device).
    """

    teacher_views: TeacherViews | None = None
    batches = "labelled"  # what the batches hold; a regime trains on one kind (kdlab.modules.base.TrainingModule.batches)

    in_channels = 3

    def __init__(
        self,
        name: str = "cifar100",
        num_classes: int | None = None,
        root: str = "data",
        batch_size: int = 64,
        val_size: int = 5000,
        split_seed: int = 0,
        download: bool = True,
        num_workers: int = 4,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"unknown CIFAR dataset {name!r}: choose one of {sorted(VARIANTS)}")
        self.variant = VARIANTS[name]
        if num_classes is not None and num_classes != self.variant.num_classes:
            raise ValueError(
                f"{name} has {self.variant.num_classes} classes, but num_classes={num_classes} was given "
                "(dataset.num_classes): pick the dataset of the models' class count or fix num_classes"
            )
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        self.name, self.num_classes = name, self.variant.num_classes
        self.root, self.batch_size, self.val_size, self.split_seed = Path(root), batch_size, val_size, split_seed
        self.download, self.num_workers, self.on_device = download, num_workers, on_device
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare_data(self) -> None:
        self._read(train=True)
        self._read(train=False)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_images, train_labels = self._read(train=True)
        test = self._read(train=False)
        if self.val_size >= len(train_labels):
            raise ValueError(
                f"val_size={self.val_size} leaves no training images (the train set has {len(train_labels)})"
            )
        order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.split_seed))
        val_index, train_index = order[: self.val_size].sort().values, order[self.val_size :].sort().values
        self.splits = {
            "train": (train_images[train_index], train_labels[train_index]),
            "val": (train_images[val_index], train_labels[val_index]) if self.val_size else test,
            "test": test,
        }

    def _read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One official split as uint8 `[N, 3, 32, 32]` and int64 `[N]`, read by torchvision's class
        (which checks the files' md5 sums, and downloads them first when `download` and missing)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / f".{self.name}.lock")):  # one download when several processes start
            data = self.variant.dataset(str(self.root), train=train, download=self.download)
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        return images, torch.tensor(data.targets, dtype=torch.int64)

    def _loader(self, split: str, train: bool) -> DataLoader | DeviceBatches:
        images, labels = self.splits[split]
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if self.on_device:
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
            order = EpochOrder(len(labels), shuffle=train, seed=run_seed(), rank=rank, world_size=world_size, drop_uneven=train)
            return DeviceBatches(images.to(device), labels.to(device), self.batch_size, self.variant.mean,
                                 self.variant.std, augment=train, order=order, padding=PADDING)
        augment = [v2.RandomCrop(32, padding=PADDING), v2.RandomHorizontalFlip()] if train else []
        normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.variant.mean, self.variant.std)]
        # training: each image's crop and flip are seeded by (seed, epoch, index), whichever worker draws them
        order = EpochOrder(len(labels), True, run_seed(), rank, world_size, drop_uneven=True, keyed=True) if train else None
        return DataLoader(
            TransformedImages(images, labels, v2.Compose([*augment, *normalise])),
            batch_size=self.batch_size,
            sampler=order,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def view_source(self) -> ViewSource:
        """The train split for a teacher-output cache (`kdlab.data.views`): uint8 images, the crop padding, the
        flip and the normalisation of the training transform."""
        self.setup("fit")
        images, labels = self.splits["train"]
        return ViewSource(images, labels, padding=PADDING, flip=True, mean=self.variant.mean, std=self.variant.std)

    def train_dataloader(self) -> DataLoader | DeviceBatches | ViewBatches:
        if self.teacher_views is not None:
            return replay_loader(self, self.teacher_views)
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("test", train=False)
