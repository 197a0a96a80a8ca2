"""Evaluation metrics (torchmetrics-based, so they synchronise across DDP processes)."""

from kdlab.metrics.alignment import PreferencePanel
from kdlab.metrics.classification import ClassificationPanel
from kdlab.metrics.lm import TokenPanel

__all__ = ["ClassificationPanel", "PreferencePanel", "TokenPanel"]
