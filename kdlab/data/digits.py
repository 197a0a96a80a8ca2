"""scikit-learn's bundled handwritten digits: 1,797 8x8 images, 10 classes, no download."""

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from kdlab.data.splits import SplitDataModule
from kdlab.data.views import ViewSource


class IndexedTensorDataset(Dataset):
    """Images and labels as tensors; items are `{"input": [C,H,W], "label": [], "index": []}`.

    The index lets self-distillation methods keep per-sample state (e.g. PS-KD's past predictions).
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input": self.inputs[index], "label": self.labels[index], "index": torch.tensor(index)}


class TensorBatches(IndexedTensorDataset):
    """An `IndexedTensorDataset` whose DataLoader fetches a batch at once: `__getitems__(indices)` is
    one indexing per tensor, `{"input": [B,C,H,W], "label": [B], "index": [B]}`, the batch that taking
    the items one by one and collating them gives, without a Python call per item (which costs more
    than a small model's step). Its loader's `collate_fn` is `fetched_batch`."""

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.tensor(indices, dtype=torch.int64)
        return {"input": self.inputs[rows], "label": self.labels[rows], "index": rows}


def fetched_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The collation of a batch `TensorBatches.__getitems__` fetched whole: the batch itself."""
    return batch


class DigitsDataModule(SplitDataModule):
    """Stratified train/val/test split of the digits, pixels scaled to [0, 1] and standardised.

    The split depends only on `split_seed`, so teachers and students of every run see the same
    held-out data. Shapes: `input` `[B, 1, 8, 8]` float32, `label` `[B]` int64.
    """

    batches = "labelled"  # what the batches hold; a regime trains on one kind (kdlab.modules.base.TrainingModule.batches)
    collate = staticmethod(fetched_batch)  # the splits are `TensorBatches`: fetched a batch at a time

    num_classes = 10
    in_channels = 1

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) and sum to < 1"
            )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.splits: dict[str, TensorBatches] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0
        labels = digits.target.astype(np.int64)
        rest_x, test_x, rest_y, test_y = train_test_split(
            images, labels, test_size=self.test_fraction, stratify=labels, random_state=self.split_seed
        )
        train_x, val_x, train_y, val_y = train_test_split(
            rest_x,
            rest_y,
            test_size=self.val_fraction / (1 - self.test_fraction),
            stratify=rest_y,
            random_state=self.split_seed,
        )
        mean, std = train_x.mean(), train_x.std()

        def to_dataset(x: np.ndarray, y: np.ndarray) -> TensorBatches:
            inputs = torch.from_numpy((x - mean) / std).unsqueeze(1)
            return TensorBatches(inputs, torch.from_numpy(y))

        self.splits = {
            "train": to_dataset(train_x, train_y),
            "val": to_dataset(val_x, val_y),
            "test": to_dataset(test_x, test_y),
        }

    def split_dataset(self, split: str) -> TensorBatches:
        return self.splits[split]

    def view_source(self) -> ViewSource:
        """The train split for a teacher-output cache (`kdlab.data.views`): standardised, not augmented (one view)."""
        self.setup("fit")
        return ViewSource(self.splits["train"].inputs, self.splits["train"].labels, padding=0, flip=False)
