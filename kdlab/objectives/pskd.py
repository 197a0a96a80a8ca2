"""Progressive Self-Knowledge Distillation (PS-KD; Kim et al., ICCV 2021): the model's own past predictions as targets."""

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, PrepareContext
from kdlab.objectives.progress import Progress


class PSKD(Objective):
    """`L = -Σ_c ỹ_c log softmax(z)_c` (mean over the batch) with progressive soft targets

    `ỹ_i = (1 - α_t) · onehot(y_i) + α_t · Π_i`,   `α_t = alpha_T · (t + 1) / E`

    for 0-based epoch t of E (the official code's schedule: alpha_T is reached in the last epoch).
    `Π` `[N_train, C]` holds, per training sample (`batch["index"]`), the softmax prediction made
    the last time the sample was trained on (the previous epoch; a train-mode prediction on the
    augmented view, as in the code); a sample not yet seen uses its one-hot label, so every target of
    epoch 0 is one-hot. `Π` is a buffer sized when fitting starts and saved in checkpoints. With
    several processes, predictions are all-gathered so every process holds the whole `Π`.

    Published default (lgcnsai/PS-KD-Pytorch): alpha_T=0.8 (CIFAR-100, 300 epochs).
    """

    def __init__(self, *, alpha_T: float) -> None:
        super().__init__()
        if not 0 <= alpha_T <= 1:
            raise ConfigError(f"objective.alpha_T must be in [0, 1], got {alpha_T}")
        self.alpha_T = alpha_T
        self.register_buffer("predictions", None)  # [N_train, C], sized in `prepare`
        self.register_buffer("recorded", None)  # [N_train] bool

    def prepare(self, context: PrepareContext) -> None:
        """Size the prediction buffer by the training set and the number of classes."""
        dataset = getattr(context.train_loader(), "dataset", None)
        if dataset is None:
            raise ConfigError("PS-KD needs a training DataLoader over a dataset with a length (it keeps one row per sample)")
        self.register_buffer("predictions", torch.zeros(len(dataset), context.num_classes))
        self.register_buffer("recorded", torch.zeros(len(dataset), dtype=torch.bool))

    def alpha(self, progress: Progress) -> float:
        return self.alpha_T * progress.fraction_done()

    def targets(self, labels: torch.Tensor, index: torch.Tensor, alpha: float) -> torch.Tensor:
        """`(1 - α) · onehot(y) + α · Π[index]`, with `Π[index] = onehot(y)` for samples not yet recorded: `[B, C]`."""
        one_hot = F.one_hot(labels, self.predictions.shape[1]).to(self.predictions.dtype)
        past = torch.where(self.recorded[index, None], self.predictions[index], one_hot)
        return (1 - alpha) * one_hot + alpha * past

    @torch.no_grad()
    def record(self, index: torch.Tensor, probabilities: torch.Tensor) -> None:
        """Store `Π[index] = probabilities` (from every process when training runs on several)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            index, probabilities = (_all_gather(t) for t in (index, probabilities))
        self.predictions[index] = probabilities.to(self.predictions.dtype)
        self.recorded[index] = True

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.predictions is None:
            raise RuntimeError("PSKD.prepare(context) must run before the loss (the module calls it when fitting starts)")
        logits, labels, index = outputs["logits"].float(), batch["label"], batch["index"]
        alpha = self.alpha(outputs["progress"])
        loss = F.cross_entropy(logits, self.targets(labels, index, alpha))
        self.record(index, logits.detach().softmax(dim=-1))
        return loss, {"pskd_alpha": torch.tensor(alpha), "ce_hard": F.cross_entropy(logits.detach(), labels)}


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every process (DistributedSampler pads ranks to equal sizes)."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
