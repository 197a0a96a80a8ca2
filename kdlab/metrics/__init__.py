"""Evaluation metrics (torchmetrics-based, so they synchronise across DDP processes)."""

from kdlab.metrics.classification import ClassificationPanel

__all__ = ["ClassificationPanel"]
