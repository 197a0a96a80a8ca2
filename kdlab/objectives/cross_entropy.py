"""Supervised cross-entropy: how teachers and the `scratch` baseline are trained."""

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropy(nn.Module):
    """`L = CE(y, softmax(z))`, mean over the batch, with optional label smoothing."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = F.cross_entropy(outputs["logits"].float(), batch["label"], label_smoothing=self.label_smoothing)
        return ce, {"ce": ce.detach()}
