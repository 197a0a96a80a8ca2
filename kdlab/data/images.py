"""What the datamodules of a user's own images share (`dataset=image_folder`, `dataset=image_arrays`).

A reader turns the files into `LabelledImages` (all images in one tensor: small data). `ImageDataModule`
then splits them (the given splits, or stratified fractions with a fixed seed), standardises every
channel with the mean and standard deviation of the train split only, and serves batches
`{"input": [B, C, H, W] float32, "label": [B] int64, "index": [B]}`; the optional augmentation (random
crop of the zero-padded standardised image, horizontal flip) is applied to training batches only, drawn
from the seed `EpochOrder(keyed=True)` gives each sample (a resumed run sees the same crops).

The number of classes, the channels and the image size are inferred from the data: the presets'
`num_classes: ${inferred:num_classes,${dataset.datamodule}}` asks the datamodule the node builds (the
resolver `inferred`, registered when this module is imported). Reading is cached per process, so the
resolver, the run's checks and the datamodule read the files once.
"""

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.transforms import v2

from kdlab.data.cifar import TransformedImages
from kdlab.data.digits import IndexedTensorDataset
from kdlab.data.order import EpochOrder, run_seed
from kdlab.data.splits import SplitDataModule
from kdlab.data.views import ViewSource
from kdlab.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledImages:
    """Images `[N, C, H, W]` (uint8 in [0, 255], or float) and labels `[N]` int64 in `[0, num_classes)`.

    `splits` maps "train"/"val"/"test" to indices `[n]` into them when the files give the splits
    (None: `ImageDataModule` splits by fractions); `source` names the file or folder in messages.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    source: str
    splits: dict[str, torch.Tensor] | None = None

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> list[int]:
        """`[H, W]`."""
        return list(self.images.shape[-2:])

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the pixels, labels and splits: a cached teacher is reused only for the same data."""
        digest = hashlib.sha256()
        for tensor in (self.images, self.labels, *(self.splits or {}).values()):
            digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()


def image_size(size: int | Sequence[int] | None, key: str) -> tuple[int, int] | None:
    """`size` (an int for square images, or `[H, W]`) as `(H, W)`; None stays None."""
    if size is None:
        return None
    sizes = [size] * 2 if isinstance(size, int) else list(size)
    if len(sizes) != 2 or not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise ConfigError(f"{key}={size} must be an integer >= 1 or a pair [height, width]")
    return sizes[0], sizes[1]


def resize(images: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Images `[N, C, H, W]` resized (bilinear, antialiased) to `size`; unchanged when None or already that size."""
    if size is None or tuple(images.shape[-2:]) == size:
        return images
    return v2.functional.resize(images, list(size), antialias=True)


def check_labels(labels: torch.Tensor, num_classes: int | None, source: str) -> int:
    """The number of classes of labels `[N]` int64: `num_classes` when given, else the largest label + 1.

    DataError for a negative label, a label outside `[0, num_classes)`, or a single class.
    """
    if len(labels) == 0:
        raise DataError(f"{source} has no images: give at least two classes of images")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(f"{source}: label {low} at row {int(labels.argmin())} is negative: labels must be 0, 1, ..., num_classes - 1")
    if num_classes is not None and high >= num_classes:
        raise DataError(f"{source}: label {high} at row {int(labels.argmax())} is outside [0, {num_classes}) "
                        f"(dataset.datamodule.num_classes={num_classes}): fix the labels, or set dataset.datamodule.num_classes={high + 1} "
                        "(null: the largest label + 1)")
    if len(labels.unique()) < 2:
        raise DataError(f"{source} has one class only (label {low}): a classifier needs at least two classes of images")
    return num_classes if num_classes is not None else high + 1


def stratified_split(labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int, source: str) -> dict[str, torch.Tensor]:
    """Indices `[n]` of "train", "val" and "test": `test_fraction` and `val_fraction` of the labels `[N]`,
    each class in the same proportion in every split, the same for the same `seed`."""
    everything = torch.arange(len(labels)).numpy()
    target = labels.numpy()
    try:
        rest, test = train_test_split(everything, test_size=test_fraction, stratify=target, random_state=seed)
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=target[rest], random_state=seed)
    except ValueError as error:  # scikit-learn: a class with too few images for the fractions
        raise DataError(f"{source}: {len(labels)} images cannot be split stratified by dataset.datamodule.val_fraction={val_fraction} "
                        f"and test_fraction={test_fraction} ({error}): give more images per class, or give train/val/test folders") from None
    return {name: torch.from_numpy(indices).sort().values for name, indices in zip(SPLITS, (train, val, test))}


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Images as float32: uint8 scaled to [0, 1], float kept as it is."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation `[C]` (float64, population std) of float images `[N, C, H, W]`;
    a channel that is constant gets std 1."""
    values = images.double().transpose(0, 1).reshape(images.shape[1], -1)
    mean, std = values.mean(dim=1), values.std(dim=1, correction=0)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


class ImageDataModule(SplitDataModule):
    """Base of the datamodules of a user's own images: subclasses implement `read() -> LabelledImages`.

    Batches: `input` `[B, C, H, W]` float32 (standardised with the train split's per-channel statistics,
    `mean`/`std` `[C]`), `label` `[B]` int64, `index` `[B]` (position in the split). `num_classes`,
    `in_channels` and `image_size` (`[H, W]`) are the data's. `augment`: `random_crop_padding` (int or
    null: off) and `horizontal_flip` (bool), training batches only.
    """

    batches = "labelled"  # kdlab.modules.base.TrainingModule.batches

    def __init__(
        self,
        size: int | list[int] | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        augment: dict[str, Any] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(f"dataset.datamodule.val_fraction={val_fraction} and test_fraction={test_fraction} "
                              "must be in (0, 1) and sum to < 1")
        self.size = image_size(size, "dataset.datamodule.size")
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        augment = dict(augment or {})
        unknown = set(augment) - {"random_crop_padding", "horizontal_flip"}
        if unknown:
            raise ConfigError(f"dataset.datamodule.augment.{sorted(unknown)[0]} is not an augmentation: use random_crop_padding "
                              "(int or null) and horizontal_flip (bool)")
        self.padding: int | None = augment.get("random_crop_padding")
        self.flip: bool = bool(augment.get("horizontal_flip", False))
        if self.padding is not None and (not isinstance(self.padding, int) or self.padding < 0):
            raise ConfigError(f"dataset.datamodule.augment.random_crop_padding={self.padding} must be an integer >= 0 or null")
        self.splits: dict[str, Dataset] = {}
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def read(self) -> LabelledImages:
        """The images and labels of the files (cached by the subclass: read once per process)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return self.read().num_classes

    @property
    def in_channels(self) -> int:
        return self.read().in_channels

    @property
    def image_size(self) -> list[int]:
        return self.read().image_size

    @property
    def fingerprint(self) -> str:
        return self.read().fingerprint

    @property
    def augments(self) -> bool:
        return bool(self.padding) or self.flip

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self.read()
        indices = data.splits or stratified_split(data.labels, self.val_fraction, self.test_fraction, self.split_seed, data.source)
        images = as_float(data.images)
        self.mean, self.std = channel_stats(images[indices["train"]])
        standardised = ((images - self.mean.float()[:, None, None]) / self.std.float()[:, None, None]).contiguous()
        self.splits = {split: IndexedTensorDataset(standardised[indices[split]], data.labels[indices[split]]) for split in SPLITS}
        if self.augments:
            train = self.splits["train"]
            self.splits["train"] = TransformedImages(train.inputs, train.labels, self.augmentation(data.image_size))

    def augmentation(self, size: list[int]) -> v2.Transform:
        """The training transform of one standardised image `[C, H, W]`: random crop of the image padded by
        `random_crop_padding` zeros (the train mean), then a horizontal flip with probability 1/2."""
        steps = [v2.RandomCrop(size, padding=self.padding)] if self.padding else []
        return v2.Compose([*steps, *([v2.RandomHorizontalFlip()] if self.flip else [])])

    def split_dataset(self, split: str) -> Dataset:
        return self.splits[split]

    def view_source(self) -> ViewSource:
        """The train split for a teacher-output cache (`kdlab.data.views`): standardised, with this datamodule's
        crop padding and flip (the same zero fill as `augmentation`)."""
        self.setup("fit")
        train = self.splits["train"]
        images = train.images if isinstance(train, TransformedImages) else train.inputs
        return ViewSource(images, train.labels, padding=self.padding or 0, flip=self.flip)

    def _epoch_order(self, size: int) -> EpochOrder:
        """Keyed when augmenting: each sample's crop and flip are seeded by (seed, epoch, index)."""
        order = super()._epoch_order(size)
        if not self.augments:
            return order
        return EpochOrder(size, shuffle=True, seed=run_seed(), rank=order.rank, world_size=order.world_size, drop_uneven=True, keyed=True)


def inferred(what: str, node: DictConfig | Mapping[str, Any]) -> Any:
    """The value `what` (`num_classes`, `in_channels`, `image_size`, `fingerprint`) of the datamodule the config
    node `node` builds (its `_target_` an `ImageDataModule`); the resolver `${inferred:what,${dataset.datamodule}}`."""
    arguments = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    target = get_class(arguments.pop("_target_"))
    datamodule = target(**{key: value for key, value in arguments.items() if not key.startswith("_")})
    return getattr(datamodule, what)


OmegaConf.register_new_resolver("inferred", inferred, replace=True)
