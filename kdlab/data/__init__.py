"""LightningDataModules, one per dataset family. Classification batches are dicts `input`, `label`,
`index`; language-model batches follow `kdlab.data.text` (`input_ids`, `attention_mask`, `labels`, ...).
A datamodule of one's own subclasses `SplitDataModule` (splits as `IndexedTensorDataset`s, for labelled
tensors): docs/data.md states the batch contract, with an example."""

from kdlab.data.cifar import CIFARDataModule
from kdlab.data.digits import DigitsDataModule, IndexedTensorDataset
from kdlab.data.glue import GLUEDataModule
from kdlab.data.image_arrays import ImageArrayDataModule
from kdlab.data.image_folder import ImageFolderDataModule
from kdlab.data.images import ImageDataModule, LabelledImages
from kdlab.data.instructions import InstructionDataModule
from kdlab.data.on_device import DeviceBatches
from kdlab.data.oracle import OracleDataModule
from kdlab.data.preference import PreferenceDataModule
from kdlab.data.splits import SplitDataModule
from kdlab.data.synthetic_preferences import SyntheticPreferenceDataModule
from kdlab.data.text_classification import TextClassificationDataModule

__all__ = ["CIFARDataModule", "DeviceBatches", "DigitsDataModule", "GLUEDataModule", "ImageArrayDataModule", "ImageDataModule", "ImageFolderDataModule", "IndexedTensorDataset", "InstructionDataModule", "LabelledImages", "OracleDataModule", "PreferenceDataModule", "SplitDataModule", "SyntheticPreferenceDataModule", "TextClassificationDataModule"]
