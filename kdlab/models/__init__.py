"""Models that kdlab trains and distils; every config's `model.teacher` / `model.student` names one."""

from kdlab.models.small_cnn import SmallCNN

__all__ = ["SmallCNN"]
