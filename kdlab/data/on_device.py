"""Small image datasets held whole as uint8 tensors on the training device, augmented there.

A CIFAR train set is 150 MB as uint8: on a GPU, crop + flip + normalise of a batch are a few
tensor ops, so an epoch costs what the models cost, with no DataLoader workers. The same code runs
on the CPU (and in the tests).
"""

import math
from collections.abc import Iterator, Sequence

import torch

from kdlab.data.order import EpochOrder


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """torchvision's `RandomCrop(size, padding)` + `RandomHorizontalFlip()` for a whole batch.

    `images` `[B, C, H, W]` (any dtype) are zero-padded by `padding` on every side; each image gets
    its own crop offset, uniform on `{0, ..., 2 * padding}` in each axis, and is mirrored left-right
    with probability 1/2 — the distribution of the torchvision transforms (zero fill). Returns
    `[B, C, H, W]`, same dtype and device.
    """
    b, device = len(images), images.device
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
    flip = torch.rand(b, generator=generator, device=device) < 0.5
    return crop_flip(images, padding, top, left, flip)


def crop_flip(images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The crops and flips given per image: `images` `[B, C, H, W]` zero-padded by `padding`, cut at rows
    `top[b] .. top[b] + H - 1` and columns `left[b] .. left[b] + W - 1` (offsets `[B]` in `{0, ..., 2 * padding}`),
    then mirrored left-right where `flip` `[B]` (bool) is set. Returns `[B, C, H, W]`, same dtype and device."""
    b, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    rows = top[:, None] + torch.arange(h, device=device)  # [B, H]
    columns = torch.arange(w, device=device)
    columns = left[:, None] + torch.where(flip[:, None], columns.flip(0), columns)  # [B, W]: a flip reads the columns backwards
    batch = torch.arange(b, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], columns[:, None, None, :]]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 `[B, C, H, W]` in 0..255 -> float32 `(x / 255 - mean_c) / std_c`."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


class DeviceBatches:
    """Batches `{"input", "label", "index"}` of images resident on one device.

    `images` uint8 `[N, C, H, W]` and `labels` `[N]` live on the same device; each batch is cut by
    index from them, optionally augmented with `random_crop_flip`, then normalised to float32.
    `index` is the position in this split (for per-sample state such as PS-KD's). The crops and
    flips of an epoch come from a generator on the device seeded by `(seed, epoch, rank)`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], augment: bool, order: EpochOrder, padding: int = 4) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.mean, self.std = batch_size, mean, std
        self.augment, self.padding = augment, padding
        # DataLoader's attribute names, which Lightning inspects: it calls `sampler.set_epoch` every epoch
        self.sampler, self.batch_sampler = order, None

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.sampler
        device = self.images.device
        seed = (order.seed * 100_003 + order.epoch) * 1_009 + order.rank
        generator = torch.Generator(device=device).manual_seed(seed)
        for index in order.indices().to(device).split(self.batch_size):
            images = self.images[index]
            if self.augment:
                images = random_crop_flip(images, self.padding, generator)
            yield {"input": normalize(images, self.mean, self.std), "label": self.labels[index], "index": index}
