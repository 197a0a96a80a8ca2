"""KD++: KD with the feature Norm-and-Direction regulariser (ND; Wang et al., 2023, arXiv 2305.17007)."""

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.divergences import Divergence
from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, OpenSlot, PrepareContext


def nd_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """`(1/B) Σ_i [1 - ⟨h^s_i, e_i⟩ / max(‖h^s_i‖, ‖h^t_i‖)]` for features `[B, d]` and unit class-mean
    directions `e_i = c_{y_i}/‖c_{y_i}‖` `[B, d]`: pulls the student's embedding onto the teacher's
    class-mean direction with a norm at least the teacher's."""
    student_features, teacher_features = student_features.float(), teacher_features.float()
    largest_norm = torch.maximum(student_features.norm(dim=-1), teacher_features.norm(dim=-1))
    return (1 - (student_features * directions).sum(dim=-1) / largest_norm).mean()


@torch.no_grad()
def class_mean_directions(teacher: nn.Module, loader: Iterable[dict[str, torch.Tensor]], num_classes: int, device: torch.device) -> torch.Tensor:
    """Unit vectors of the teacher's per-class mean penultimate embedding over `loader`: `[C, d]`."""
    was_training = teacher.training
    teacher.eval()
    sums, counts = None, torch.zeros(num_classes, device=device)
    for batch in loader:
        _, features = teacher(batch["input"].to(device), return_features=True)
        embedding = features["penultimate"].float()
        labels = batch["label"].to(device)
        if sums is None:
            sums = torch.zeros(num_classes, embedding.shape[-1], device=device)
        sums.index_add_(0, labels, embedding)
        counts += torch.bincount(labels, minlength=num_classes)
    teacher.train(was_training)
    if sums is None or (counts == 0).any():
        missing = [] if sums is None else (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"ND needs training samples of every class to compute teacher class means; none for classes {missing or 'all'}")
    return F.normalize(sums / counts[:, None], dim=-1)


def embedding_projector(student_dim: int, teacher_dim: int) -> nn.Module:
    """Identity when widths agree, else the code's `EmbTrans`: BatchNorm1d(d_s) → Dropout(0.5) →
    Linear(d_s, d_t), BN weight 1, zero biases; trained with the student."""
    if student_dim == teacher_dim:
        return nn.Identity()
    projector = nn.Sequential(nn.BatchNorm1d(student_dim), nn.Dropout(0.5), nn.Linear(student_dim, teacher_dim))
    nn.init.zeros_(projector[2].bias)
    return projector


class ND(Objective):
    """`L = ce_weight · CE(y, q) + min(1, epoch / kd_warmup_epochs) · kd_weight · T² · D(p_T ‖ q_T) + nd_weight · L_ND`

    (KD++; `nd_loss` for L_ND, on the student's penultimate embedding — projected to the teacher's
    width when they differ — against the teacher's class-mean directions, computed once over the
    training set with the teacher in eval mode when fitting starts). `D` is the divergence slot
    (any registered divergence; forward KL in the paper). The KD warm-up counts epochs from 0 as the code does (weight 0 in
    the first epoch). The class means are taken over the training loader as the datamodule serves
    it (with its augmentation; the code used stored means of the plain training images) and are
    recomputed, not checkpointed, whenever fitting starts (also on resume).

    Published defaults (WangYZ1608/Knowledge-Distillation-via-ND `train_cifar.sh`, CIFAR-100, T=4,
    warm-up 20): ResNet56→20 (ce 1, kd 1, nd 2); ResNet32x4→8x4 (1, 3.5, 2); WRN-40-2→40-1 (1, 1, 1.5);
    ResNet50→MobileNetV2 (1, 3, 0.5); ResNet32x4→ShuffleV1 (1, 2.5, 1.5); ResNet32x4→ShuffleV2 (1, 4, 0.5).
    """

    divergence_slot = OpenSlot()
    needs_features = True

    def __init__(
        self,
        divergence: Divergence,
        *,
        temperature: float,
        ce_weight: float,
        kd_weight: float,
        nd_weight: float,
        kd_warmup_epochs: int,
    ) -> None:
        super().__init__()
        if temperature <= 0 or kd_warmup_epochs < 1:
            raise ConfigError(f"ND needs objective.temperature > 0 and objective.kd_warmup_epochs >= 1, got {temperature}, {kd_warmup_epochs}")
        self.divergence = self.divergence_slot.bind("ND", divergence)
        self.temperature = temperature
        self.ce_weight, self.kd_weight, self.nd_weight = ce_weight, kd_weight, nd_weight
        self.kd_warmup_epochs = kd_warmup_epochs
        self.projector: nn.Module | None = None
        self.register_buffer("directions", None, persistent=False)  # [C, d_t], computed in `prepare`

    def prepare(self, context: PrepareContext) -> None:
        """Build the projector and compute the teacher's class-mean directions on the training device."""
        if context.teacher is None:
            raise ConfigError("ND regularises the student towards a teacher's class means: it needs a regime with a teacher")
        student_dim = context.example_features(context.model)["penultimate"].shape[-1]
        teacher_dim = context.example_features(context.teacher)["penultimate"].shape[-1]
        self.projector = embedding_projector(student_dim, teacher_dim)
        with torch.random.fork_rng(devices=[]):  # the extra pass leaves training's random state as it was
            self.directions = class_mean_directions(context.teacher.to(context.device), context.train_loader(), context.num_classes, context.device)

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.projector is None:
            raise RuntimeError("ND.prepare(module) must run before the loss (the module calls it when fitting starts)")
        student, teacher, labels = outputs["logits"], outputs["teacher_logits"], batch["label"]
        ce = F.cross_entropy(student.float(), labels)
        kd = self.temperature**2 * self.divergence(student, teacher, temperature=self.temperature)
        warmup = min(outputs["progress"].epoch / self.kd_warmup_epochs, 1.0)
        student_embedding = self.projector(outputs["features"]["penultimate"])
        nd = nd_loss(student_embedding, outputs["teacher_features"]["penultimate"], self.directions[labels])
        loss = self.ce_weight * ce + warmup * self.kd_weight * kd + self.nd_weight * nd
        return loss, {"ce": ce.detach(), "kd": kd.detach(), "nd": nd.detach()}
