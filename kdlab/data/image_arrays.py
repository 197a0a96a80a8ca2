"""`dataset=image_arrays`: images and labels as arrays in one file (`.npz` with `images`/`labels` or `x`/`y`;
`.pt` with a dict of tensors under the same keys) or two (`.npy` images at `path`, labels at `labels_path`).

Images `[N, H, W]`, `[N, H, W, C]` or `[N, C, H, W]` (C in 1..4), uint8 or float; labels `[N]` integers.
Split, standardisation and inference: `kdlab.data.images`.
"""

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.data.images import ImageDataModule, LabelledImages, check_labels, resize
from kdlab.errors import ConfigError, DataError

KEYS = (("images", "labels"), ("x", "y"))  # the names of the two arrays in a .npz or .pt file
MAX_CHANNELS = 4


def channels_first(images: torch.Tensor, source: str) -> torch.Tensor:
    """Images `[N, H, W]`, `[N, H, W, C]` or `[N, C, H, W]` as `[N, C, H, W]` (a 4-D array is channels-first
    when its second axis has at most 4 entries, else channels-last)."""
    if images.dim() == 3:
        return images[:, None]
    if images.dim() == 4 and images.shape[1] <= MAX_CHANNELS:
        return images
    if images.dim() == 4 and images.shape[-1] <= MAX_CHANNELS:
        return images.permute(0, 3, 1, 2)
    raise DataError(f"{source}: images of shape {list(images.shape)} are not [N, H, W], [N, H, W, C] or [N, C, H, W] "
                    f"with C <= {MAX_CHANNELS}")


def _pair(arrays: dict[str, Any], source: str) -> tuple[Any, Any]:
    for images, labels in KEYS:
        if images in arrays and labels in arrays:
            return arrays[images], arrays[labels]
    raise DataError(f"{source} holds {', '.join(sorted(arrays)) or 'nothing'}: it needs the arrays 'images' and 'labels' (or 'x' and 'y')")


def _load(path: Path, labels_path: Path | None) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """The images and labels arrays of the file(s), as the file holds them."""
    if path.suffix == ".npy":
        if labels_path is None:
            raise ConfigError(f"dataset.datamodule.path={path} holds the images only: give the labels too, dataset.datamodule.labels_path=FILE.npy")
        return np.load(path, allow_pickle=False), np.load(labels_path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return _pair(dict(arrays), str(path))
    if path.suffix == ".pt":
        arrays = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(arrays, dict):
            raise DataError(f"{path} holds a {type(arrays).__name__}: save a dict, torch.save({{'images': ..., 'labels': ...}}, path)")
        return _pair(arrays, str(path))
    raise ConfigError(f"dataset.datamodule.path={path} is not a .npz, .pt or .npy file: save the arrays as one of these (docs/images.md)")


@lru_cache(maxsize=4)
def read_arrays(path: str, labels_path: str | None, num_classes: int | None, size: tuple[int, int] | None) -> LabelledImages:
    """The images and labels of the file(s) (see the module docstring); `num_classes` None: the largest label + 1."""
    for key, name in (("path", path), ("labels_path", labels_path)):
        if name is not None and not Path(name).expanduser().is_file():
            raise DataError(f"dataset.datamodule.{key}={name} does not exist: give the file of your arrays (docs/images.md)")
    images, labels = _load(Path(path).expanduser(), Path(labels_path).expanduser() if labels_path else None)
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DataError(f"{path}: images of type {images.dtype}: save them as uint8 (0..255) or float")
    if labels.dim() != 1 or labels.is_floating_point() or len(labels) != len(images):
        raise DataError(f"{labels_path or path}: labels of shape {list(labels.shape)} and type {labels.dtype}: "
                        f"they must be {len(images)} integers, one per image")
    labels = labels.long()
    classes = check_labels(labels, num_classes, labels_path or path)
    return LabelledImages(resize(channels_first(images, path), size).contiguous(), labels, classes, path)


class ImageArrayDataModule(ImageDataModule):
    """Images and labels from `path` (and `labels_path` for `.npy`), see the module docstring; `num_classes`
    declares the label space when some classes have no image (None: the largest label + 1); `size`
    (int or `[H, W]`) resizes every image. Batches and the rest: `kdlab.data.images.ImageDataModule`."""

    def __init__(
        self,
        path: str | None = None,
        labels_path: str | None = None,
        num_classes: int | None = None,
        size: int | list[int] | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        augment: dict[str, Any] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(size, val_fraction, test_fraction, split_seed, augment, batch_size, num_workers)
        self.path, self.labels_path, self.declared_classes = path, labels_path, num_classes

    def read(self) -> LabelledImages:
        if self.path is None:
            raise ConfigError("dataset.datamodule.path is not set: give the file of your arrays, dataset.datamodule.path=FILE (docs/images.md)")
        return read_arrays(str(self.path), self.labels_path and str(self.labels_path), self.declared_classes, self.size)
