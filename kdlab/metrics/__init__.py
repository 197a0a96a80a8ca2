"""Evaluation metrics (torchmetrics-based, so they synchronise across DDP processes)."""

from kdlab.metrics.alignment import PreferencePanel
from kdlab.metrics.classification import ClassificationPanel

__all__ = ["ClassificationPanel", "PreferencePanel"]
