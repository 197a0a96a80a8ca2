"""LightningDataModules, one per dataset family. Batches are dicts: `input`, `label`, `index`."""

from kdlab.data.cifar import CIFARDataModule
from kdlab.data.digits import DigitsDataModule
from kdlab.data.on_device import DeviceBatches
from kdlab.data.preference import PreferenceDataModule
from kdlab.data.synthetic_preferences import SyntheticPreferenceDataModule

__all__ = ["CIFARDataModule", "DeviceBatches", "DigitsDataModule", "PreferenceDataModule", "SyntheticPreferenceDataModule"]
