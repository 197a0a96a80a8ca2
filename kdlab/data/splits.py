"""What every kdlab datamodule with fixed train/val/test splits shares: its three loaders."""

from collections.abc import Callable

import lightning as L
from torch.utils.data import DataLoader, Dataset


class SplitDataModule(L.LightningDataModule):
    """A datamodule that builds `split_dataset("train" | "val" | "test")` in `setup`.

    Loaders batch `batch_size` items (shuffled for training) with the subclass's `collate`
    (None: torch's default collation) in `num_workers` worker processes.
    """

    collate: Callable | None = None

    def __init__(self, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers

    def split_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.split_dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
