"""Tiny image data sets written as real files: PNGs in ImageFolder layout (PIL), and .npz / .pt / .npy arrays."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("cat", "dog", "owl")


def random_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """`n` random uint8 images of `shape` (`[H, W]` or `[H, W, C]`)."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_class_folders(root: Path, per_class: int = 6, shape: tuple[int, ...] = (6, 6, 3), seed: int = 0,
                        classes: tuple[str, ...] = CLASSES) -> Path:
    """`root/<class>/<i>.png`, `per_class` PNGs of `shape` for each class; returns `root`."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(random_images(per_class, shape, seed + 100 * c)):
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def write_split_folders(root: Path, sizes: dict[str, int] | None = None, shape: tuple[int, ...] = (6, 6, 3)) -> Path:
    """`root/{train,val,test}/<class>/<i>.png` with `sizes[split]` PNGs per class; returns `root`."""
    for seed, (split, per_class) in enumerate((sizes or {"train": 4, "val": 2, "test": 2}).items()):
        write_class_folders(root / split, per_class, shape, seed=1000 * seed)
    return root


def labelled_arrays(n: int = 18, shape: tuple[int, ...] = (6, 6, 3), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 images `[n, *shape]` and labels `[n]` cycling through the classes."""
    return random_images(n, shape, seed), np.arange(n) % len(CLASSES)


def write_arrays(path: Path, images: np.ndarray, labels: np.ndarray, keys: tuple[str, str] = ("images", "labels")) -> Path:
    """The arrays in `path`: `.npz` under `keys`, `.pt` a dict of tensors, `.npy` the images (labels beside, `<stem>_labels.npy`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **dict(zip(keys, (images, labels))))
    elif path.suffix == ".pt":
        torch.save(dict(zip(keys, (torch.from_numpy(images), torch.from_numpy(labels)))), path)
    else:
        np.save(path, images)
        np.save(path.with_name(f"{path.stem}_labels.npy"), labels)
    return path
