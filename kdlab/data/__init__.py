"""LightningDataModules, one per dataset family. Batches are dicts: `input`, `label`, `index`."""

from kdlab.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
