"""Fixed augmented views of a training set, replayed: the training batches of a teacher-output cache.

A datamodule that can replay views gives a `ViewSource` (`view_source()`): its train split before
augmentation, the augmentation (a crop of the image zero-padded by `padding`, a horizontal flip) and its
normalisation. `view_parameters` draws K views per image — crop offsets and a flip, a pure function of
(seed, view, image) — and `ViewBatches` serves training batches that replay, in epoch `e`, view `e mod K`
of every image, with the soft labels stored for that view (`kdlab.teacher_outputs` computes them once).
"""

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import lightning as L
import numpy as np
import torch

from kdlab.data.on_device import crop_flip, normalize
from kdlab.data.order import EpochOrder, run_seed
from kdlab.data.soft_labels import SoftLabels

_MASK64 = np.uint64(2**64 - 1)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser of `x` (uint64, any shape): a bijection that mixes every input bit into every output bit."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def view_parameters(seed: int, views: int, size: int, padding: int, flip: bool) -> torch.Tensor:
    """The crop and flip of view `k` of image `i`, for `k < views`, `i < size`: int64 `[views, size, 3]` holding
    `(top, left, flipped)`, `top` and `left` uniform on `{0, ..., 2 * padding}`, `flipped` in {0, 1} with
    probability 1/2 (always 0 when not `flip`) — the distribution of `RandomCrop(padding=padding)` +
    `RandomHorizontalFlip()`.

    Each triple is a function of `(seed, k, i)` alone: the bits of `splitmix64(splitmix64(splitmix64(seed) ^ k) ^ i)`
    (the crop from its high 32 bits, the flip from bit 0), the same on every machine and for any `size`.
    """
    per_view = _splitmix64(_splitmix64(np.uint64(seed)) ^ np.arange(views, dtype=np.uint64))
    h = _splitmix64(per_view[:, None] ^ np.arange(size, dtype=np.uint64)[None, :])  # [views, size]
    span = np.uint64(2 * padding + 1)
    high = h >> np.uint64(32)
    top, left = high % span, (high // span) % span
    flipped = (h & np.uint64(1)) if flip else np.zeros_like(h)
    return torch.from_numpy(np.stack([top, left, flipped], axis=-1).astype(np.int64))


@dataclass(frozen=True)
class ViewSource:
    """A train split as the augmentation sees it: `images` `[N, C, H, W]` (uint8 for CIFAR, standardised
    float for the others), `labels` `[N]` int64, the crop's `padding` (0: none), whether views `flip`, and
    the normalisation after the crop: `(x / 255 - mean_c) / std_c` when `mean`/`std` are given, else none."""

    images: torch.Tensor
    labels: torch.Tensor
    padding: int
    flip: bool
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    @property
    def augments(self) -> bool:
        """Whether two views of an image can differ."""
        return self.padding > 0 or self.flip

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the images, labels, augmentation and normalisation: cached views are reused for the same data only."""
        digest = hashlib.sha256(repr((self.padding, self.flip, self.mean, self.std)).encode())
        for tensor in (self.images, self.labels):
            digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
            digest.update(tensor.cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def inputs(self, index: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        """The model inputs `[B, C, H, W]` float32 of images `index` `[B]` under views `parameters` `[B, 3]`
        (`view_parameters`' `(top, left, flipped)`): cropped and flipped, then normalised."""
        images = self.images[index]
        if self.augments:
            images = crop_flip(images, self.padding, parameters[:, 0], parameters[:, 1], parameters[:, 2].bool())
        return normalize(images, self.mean, self.std) if self.mean is not None else images.float()

    def to(self, device: torch.device) -> "ViewSource":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


@dataclass(frozen=True)
class TeacherViews:
    """What training batches replay: the `source`, its views `parameters` `[K, N, 3]` and the teacher's
    `soft_labels` of each view of each image."""

    source: ViewSource
    parameters: torch.Tensor
    soft_labels: SoftLabels

    def to(self, device: torch.device) -> "TeacherViews":
        return TeacherViews(self.source.to(device), self.parameters.to(device), self.soft_labels.to(device))


class ViewBatches:
    """Training batches `{"input", "label", "index", "teacher_logits"}` that replay the cached views.

    The order is the datamodule's (`EpochOrder`, a function of (seed, epoch)); in epoch `e` image `i` is
    given in view `e mod K`, its input `source.inputs` of that view's crop and flip, its `teacher_logits`
    the stored ones of that view. Lightning calls `sampler.set_epoch` every epoch, also after a resume.
    """

    def __init__(self, views: TeacherViews, batch_size: int, order: EpochOrder) -> None:
        self.views, self.batch_size = views, batch_size
        self.sampler, self.batch_sampler = order, None  # DataLoader's attribute names, which Lightning inspects

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        views, device = self.views, self.views.source.images.device
        view = self.sampler.epoch % len(views.parameters)
        for index in self.sampler.indices().to(device).split(self.batch_size):
            yield {"input": views.source.inputs(index, views.parameters[view, index]), "label": views.source.labels[index],
                   "index": index, "teacher_logits": views.soft_labels.logits(view, index)}


def replay_loader(datamodule: L.LightningDataModule, views: TeacherViews) -> ViewBatches:
    """The training loader of `datamodule` when it replays `views`: its batch size, the run's epoch order
    (sharded over the trainer's processes), the images on the training device."""
    trainer = datamodule.trainer
    rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    order = EpochOrder(len(views.source.labels), shuffle=True, seed=run_seed(), rank=rank, world_size=world_size, drop_uneven=True)
    return ViewBatches(views.to(device), datamodule.batch_size, order)
