"""Supervised cross-entropy: how teachers and the `scratch` baseline are trained."""

import torch
import torch.nn.functional as F

from kdlab.objectives.base import Objective


class CrossEntropy(Objective):
    """`L = CE(y, softmax(z))` on logits `[B, C]` and labels `[B]`, mean over the batch, with label
    smoothing ε (target `(1 - ε) onehot + ε / C`; 0 = none). No divergence slot."""

    def __init__(self, *, label_smoothing: float) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = F.cross_entropy(outputs["logits"].float(), batch["label"], label_smoothing=self.label_smoothing)
        return ce, {"ce": ce.detach()}
