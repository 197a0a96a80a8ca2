"""What every kdlab datamodule with fixed train/val/test splits shares: its three loaders."""

from collections.abc import Callable, Sequence

import lightning as L
from torch.utils.data import DataLoader, Dataset, Subset

from kdlab.data.order import EpochOrder, run_seed
from kdlab.data.views import TeacherViews, ViewBatches, replay_loader


class SplitDataModule(L.LightningDataModule):
    """A datamodule that builds `split_dataset("train" | "val" | "test")` in `setup`.

    Loaders batch `batch_size` items with the subclass's `collate` (None: torch's default collation)
    in `num_workers` worker processes; training batches follow `EpochOrder`, a permutation per epoch
    seeded by the run's seed and the epoch (sharded across DDP processes). `select_train(indices)`
    restricts the training loader to those items of the train split (a data-selection method such as
    MiniPLM's difference sampling, docs/methods.md §7.7); the items keep their own `index`. A subclass
    with `view_source()` can replay a teacher-output cache: with `teacher_views` set
    (`kdlab.teacher_outputs`), training batches are `kdlab.data.views.ViewBatches`.
    """

    collate: Callable | None = None
    teacher_views: TeacherViews | None = None

    def __init__(self, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_indices: list[int] | None = None

    def select_train(self, indices: Sequence[int]) -> None:
        """Train on the items `indices` of the train split only (in the loaders built from now on)."""
        self.train_indices = [int(i) for i in indices]

    def split_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.split_dataset(split)
        if split == "train" and self.train_indices is not None:
            dataset = Subset(dataset, self.train_indices)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self._epoch_order(len(dataset)) if shuffle else None,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _epoch_order(self, size: int) -> EpochOrder:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return EpochOrder(size, shuffle=True, seed=run_seed(), rank=rank, world_size=world_size, drop_uneven=True)

    def train_dataloader(self) -> DataLoader | ViewBatches:
        if self.teacher_views is not None:
            return replay_loader(self, self.teacher_views)
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
