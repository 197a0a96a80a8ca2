"""`dataset=image_folder`: a folder of image files in torchvision's `ImageFolder` layout (`ROOT/<class>/<image>`),
read by `torchvision.datasets.ImageFolder` and PIL, either with `train/`, `val/` and `test/` sub-folders
(each one in that layout) or one folder split by fractions (see `kdlab.data.images`)."""

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2.functional import pil_to_tensor

from kdlab.data.images import SPLITS, ImageDataModule, LabelledImages, check_labels, image_size, resize
from kdlab.errors import ConfigError, DataError

GREY_MODES = ("1", "L", "I", "I;16", "F")  # PIL modes read as one channel; RGBA as four; every other as RGB


def open_image(path: str) -> Image.Image:
    """The image file at `path` as 1 (grey), 3 (RGB) or 4 (RGBA) channels: the channels it has."""
    with Image.open(path) as image:
        mode = "L" if image.mode in GREY_MODES else "RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB"
        return image.convert(mode)


def read_split(folder: Path, classes: list[str] | None, size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 images `[N, C, H, W]`, labels `[N]` and the class names of one folder in ImageFolder layout;
    labels follow `classes` (the train folder's) when given."""
    try:
        dataset = ImageFolder(str(folder), loader=open_image)
    except FileNotFoundError:  # torchvision: no class folder, or no image file in them
        raise DataError(f"{folder} has no image files in class folders: put them in one sub-folder per class, "
                        f"{folder}/<class>/<image>.png (png, jpg, bmp, tif or webp; docs/images.md)") from None
    names = classes or dataset.classes
    unknown = sorted(set(dataset.classes) - set(names))
    if unknown:
        raise DataError(f"{folder}/{unknown[0]} is a class the train folder does not have: the classes are {', '.join(names)}")
    images, shapes = [], {}
    for path, _ in dataset.samples:
        image = resize(pil_to_tensor(open_image(path))[None], size)[0]
        images.append(image)
        shapes.setdefault(image.shape[0], path)
        if len(shapes) > 1:
            (c1, first), (c2, second) = shapes.items()
            raise DataError(f"{first} has {c1} channel(s) but {second} has {c2}: every image needs the same channels "
                            "(convert them, e.g. all to RGB)")
    sizes: dict[tuple[int, ...], str] = {}
    for image, (path, _) in zip(images, dataset.samples):
        sizes.setdefault(tuple(image.shape[-2:]), path)
    if len(sizes) > 1:
        ((s1, first), (s2, second)) = list(sizes.items())[:2]
        raise DataError(f"{first} is {s1[0]}x{s1[1]} but {second} is {s2[0]}x{s2[1]}: set dataset.datamodule.size=[H,W] "
                        "to resize every image to one size")
    labels = torch.tensor([names.index(dataset.classes[target]) for _, target in dataset.samples], dtype=torch.int64)
    return torch.stack(images), labels, names


@lru_cache(maxsize=4)
def read_folder(root: str, size: tuple[int, int] | None) -> LabelledImages:
    """The images under `root`: `root/{train,val,test}/<class>/...` (the splits given) or `root/<class>/...`."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset.datamodule.root={root} is not a folder: give the folder of your images (docs/images.md)")
    if not all((folder / split).is_dir() for split in SPLITS):
        images, labels, names = read_split(folder, None, size)
        return LabelledImages(images, labels, check_labels(labels, len(names), str(folder)), str(folder))
    parts = {}
    names = None
    for split in SPLITS:
        parts[split] = read_split(folder / split, names, size)
        names = parts["train"][2]
    channels = {split: part[0].shape[1:] for split, part in parts.items()}
    if len(set(channels.values())) > 1:
        raise DataError(f"{folder}: the splits' images differ in shape [C, H, W] ({', '.join(f'{s} {list(c)}' for s, c in channels.items())}): "
                        "give every image the same channels, or set dataset.datamodule.size=[H,W] for different sizes")
    ends = torch.tensor([len(parts[split][1]) for split in SPLITS]).cumsum(0).tolist()
    splits = {split: torch.arange(end - len(parts[split][1]), end) for split, end in zip(SPLITS, ends)}
    labels = torch.cat([parts[split][1] for split in SPLITS])
    num_classes = check_labels(parts["train"][1], len(names), str(folder / "train"))
    return LabelledImages(torch.cat([parts[split][0] for split in SPLITS]), labels, num_classes, str(folder), splits)


class ImageFolderDataModule(ImageDataModule):
    """Images from `root` in ImageFolder layout (see the module docstring); `size` (int or `[H, W]`) resizes
    every image, else they must share one size. Batches and the rest: `kdlab.data.images.ImageDataModule`."""

    def __init__(
        self,
        root: str | None = None,
        size: int | list[int] | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        augment: dict[str, Any] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(size, val_fraction, test_fraction, split_seed, augment, batch_size, num_workers)
        self.root = root

    def read(self) -> LabelledImages:
        if self.root is None:
            raise ConfigError("dataset.datamodule.root is not set: give the folder of your images, dataset.datamodule.root=DIR (docs/images.md)")
        return read_folder(str(self.root), self.size)
