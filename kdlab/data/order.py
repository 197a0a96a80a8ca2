"""The order of the training samples in every epoch, a pure function of (seed, epoch): a run resumed
at an epoch boundary draws its remaining epochs exactly as the uninterrupted run does.

`EpochOrder` is the training sampler of every kdlab datamodule (`DataLoader(sampler=...)`, and the
order of `DeviceBatches`). `run_seed()` is the run's seed, as Lightning's `seed_everything` records it.
"""

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from kdlab.fingerprint import derived_seed


def run_seed() -> int:
    """The seed the run gave `lightning.seed_everything` (`PL_GLOBAL_SEED`; 0 when none was given, as
    Lightning's own distributed sampler assumes). Later re-seeding of the global generators does not change it."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochOrder(DistributedSampler):
    """The sample order of one process for each epoch: a permutation seeded by `(seed, epoch)` when
    shuffling (so every process draws the same one), cut into `world_size` interleaved shards.

    In training (`drop_uneven`) each shard has `N // world_size` samples, so that all processes
    run the same number of steps. Lightning calls `set_epoch` at the start of every epoch (it looks
    for a `sampler` with `set_epoch` on the loader), also after resuming from a checkpoint. Being a
    `DistributedSampler`, it is kept as it is under DDP (Lightning replaces any other sampler by its own).

    `keyed=True` yields `(index, sample_seed)` pairs instead of indices, `sample_seed` =
    `derived_seed(seed, epoch, index)`: a dataset that augments (`kdlab.data.cifar.TransformedImages`)
    seeds each sample's random transform with it, so that augmentation too is a function of
    (seed, epoch, index), whichever DataLoader worker draws it and whatever it drew before.
    """

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 drop_uneven: bool = False, keyed: bool = False) -> None:
        super().__init__(range(size), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_uneven)
        self.size, self.world_size, self.drop_uneven, self.keyed = size, world_size, drop_uneven, keyed

    def __len__(self) -> int:
        if self.drop_uneven:
            return self.size // self.world_size
        return len(range(self.rank, self.size, self.world_size))

    def indices(self) -> torch.Tensor:
        """This process's sample indices of the current epoch, `[len(self)]` int64."""
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.size)
        if self.drop_uneven:
            order = order[: len(self) * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        indices = self.indices().tolist()
        if self.keyed:
            return iter([(index, derived_seed(self.seed, self.epoch, index)) for index in indices])
        return iter(indices)
