"""Universal Self-Knowledge Distillation (USKD; Yang et al., ICCV 2023, arXiv 2303.13005): no teacher."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, PrepareContext
from kdlab.objectives.targets import non_target, target_column


def global_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """Mean over every axis after the channel axis: `[B, C, ...]` -> `[B, C]`."""
    return feature_map.flatten(2).mean(dim=-1) if feature_map.dim() > 2 else feature_map


def zipf_non_target_labels(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Zipf soft labels: class ranked r-th by `scores` (descending, r = 1..C) gets weight `1/r`;
    the target column is dropped and the rest renormalised: `[B, C]` -> `[B, C-1]`, rows sum to 1."""
    rank = scores.argsort(dim=-1, descending=True).argsort(dim=-1) + 1
    weights = non_target(1.0 / rank.to(scores.dtype), labels)
    return weights / weights.sum(dim=-1, keepdim=True)


class USKD(Objective):
    """`L = ce_weight · CE(y, q) + alpha · L_t + beta · L_nt + L_weak` for one model's logits `z` `[B, C]`
    and a mid-level feature map (`features["stages"][stage]`, global-pooled to `[B, channels]`).

    - Target: `ŷ_t = q_y² - mean_batch(q_y²) + 1` (detached; it may exceed 1, as in the code),
      `L_t = -ŷ_t · log q_y`.
    - Weak head: `w = Linear(channels, C)(pool(f_mid))`, trained by `L_weak = mu · CE(y, w)` with
      label smoothing 0.1 (target `0.9·onehot + 0.1/C`).
    - Non-target: classes ranked by `r = softmax(w)/(1 - softmax(w)_y) + s/(1 - s_y)` (1e-6 added to
      the denominators) get Zipf labels `ẑ` (`zipf_non_target_labels`, detached);
      `L_nt = -Σ_{c≠y} ẑ_c log softmax(z[¬y])_c`.
    `rank_uses_log_probs=True` takes `s = log_softmax(z)` as the official code does (its
    probabilities are overwritten by log-probabilities before the ranking; docs/methods.md §12.4);
    False takes `s = softmax(z)`, what the paper's text describes.

    Published defaults (yzd-v/cls_KD `res18_sd_cifar.py`): CIFAR-100 alpha=0.1, beta=0.1, mu=0.1;
    ImageNet alpha=1, beta=0.1, mu=0.005. The code pools the output of the second-to-last stage
    (`stage=-2`; 256 channels on ResNet-18); here the weak head's width is read from the model
    when fitting starts (`prepare`). The framework adds the model's CE (`ce_weight=1`).
    """

    needs_features = True

    def __init__(self, *, alpha: float, beta: float, mu: float, stage: int, rank_uses_log_probs: bool, ce_weight: float) -> None:
        super().__init__()
        self.alpha, self.beta, self.mu = alpha, beta, mu
        self.stage = stage
        self.rank_uses_log_probs = rank_uses_log_probs
        self.ce_weight = ce_weight
        self.weak_head: nn.Linear | None = None

    def prepare(self, context: PrepareContext) -> None:
        """Build the weak head for the width of the chosen stage of the model."""
        stages = context.example_features(context.model)["stages"]
        if not -len(stages) <= self.stage < len(stages):
            raise ConfigError(f"USKD objective.stage={self.stage} does not exist: the model has {len(stages)} stages")
        self.weak_head = nn.Linear(stages[self.stage].shape[1], context.num_classes)

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.weak_head is None:
            raise RuntimeError("USKD.prepare(context) must run before the loss (the module calls it when fitting starts)")
        logits, labels = outputs["logits"].float(), batch["label"]
        log_q = logits.log_softmax(dim=-1)
        ce = F.cross_entropy(logits, labels)

        q_y2 = target_column(log_q, labels).exp().square().detach()
        soft_target = q_y2 - q_y2.mean() + 1
        target_loss = -(soft_target * target_column(log_q, labels)).mean()

        weak_logits = self.weak_head(global_pool(outputs["features"]["stages"][self.stage]).float())
        weak_loss = self.mu * F.cross_entropy(weak_logits, labels, label_smoothing=0.1)

        with torch.no_grad():
            weak_p = weak_logits.softmax(dim=-1)
            s = log_q if self.rank_uses_log_probs else log_q.exp()
            scores = weak_p / (1 - target_column(weak_p, labels)[:, None] + 1e-6) + s / (
                1 - target_column(s, labels)[:, None] + 1e-6
            )
            zipf = zipf_non_target_labels(scores, labels)
        non_target_loss = -(zipf * non_target(logits, labels).log_softmax(dim=-1)).sum(dim=-1).mean()

        loss = self.ce_weight * ce + self.alpha * target_loss + self.beta * non_target_loss + weak_loss
        return loss, {
            "ce": ce.detach(),
            "uskd_target": target_loss.detach(),
            "uskd_non_target": non_target_loss.detach(),
            "uskd_weak": weak_loss.detach(),
        }
