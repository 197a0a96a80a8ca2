"""Dual-Head Knowledge Distillation (DHKD; Yang et al., 2024, arXiv 2411.08937)."""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, PrepareContext

AUX_HEADS = ("linear", "nonlinear")


def binary_kl_norm(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, replicate_clamp: bool = False
) -> torch.Tensor:
    """BinaryKL-Norm: `(T²/B) Σ_{i,c} KL(Bern(½) ‖ Bern(σ(d_ic)))`, `d = (z_s - z_t)/T`, logits `[B, C]`.

    Per element `KL(Bern(½) ‖ Bern(σ(d))) = log cosh(d/2)`, so the loss is the logit-matching
    `(T²/B) Σ log cosh((z_s - z_t)/(2T))`, computed stably as `|x| + softplus(-2|x|) - log 2`.
    `replicate_clamp=True` reproduces the official code's clamp of `σ(d)` to `[1e-8, 1 - 1e-8]`, whose
    gradient is zero once `|d| > ~18.4`. It is evaluated in float64: in float32 `1 - 1e-8` rounds
    to 1, so the official code's upper clamp does nothing and its loss is infinite once `d > ~17`.
    """
    d = (student_logits.float() - teacher_logits.float()) / temperature
    if replicate_clamp:
        s = torch.sigmoid(d.double()).clamp(1e-8, 1 - 1e-8)
        per_element = (-math.log(2) - 0.5 * (torch.log(s) + torch.log1p(-s))).to(d.dtype)
    else:
        x = (d / 2).abs()
        per_element = x + F.softplus(-2 * x) - math.log(2)
    return temperature**2 * per_element.sum() / student_logits.shape[0]


def auxiliary_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """DHKD's second head on the penultimate features: `linear` (ImageNet) or `nonlinear` (CIFAR:
    Linear(d, 200) → Dropout(0.1) → BatchNorm1d(200) → ReLU → Linear(200, C), as in the code)."""
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "nonlinear":
        return nn.Sequential(
            nn.Linear(in_features, 200), nn.Dropout(0.1), nn.BatchNorm1d(200), nn.ReLU(inplace=True), nn.Linear(200, num_classes)
        )
    raise ConfigError(f"DHKD objective.aux_head must be one of {AUX_HEADS}, got {kind!r}")


class DHKD(Objective):
    """`L = gamma · CE(y, z_s) + alpha · BinaryKL-Norm(aux_head(h_s), z_t; T)`.

    The model's own head (used at inference) gets only the cross-entropy; an auxiliary head on the
    penultimate features `h_s` — part of this objective, so trained with the model — gets only the
    logit-level BinaryKL-Norm (`binary_kl_norm`); both shape the backbone.

    `grad_align=True` (the code's `--ga`, PCGrad-style): the gradients `g_ce`, `g_kd` of the two
    weighted terms over all trained parameters are computed separately; when `g_kd · g_ce < 0`,
    `g_kd ← g_kd - (g_kd · g_ce / ‖g_ce‖²) g_ce` (only the KD gradient is projected, against the CE
    gradient, as in `OptimGradAlign`); the update uses `g_ce + g_kd`. The returned loss has the value
    `gamma·CE + alpha·KD` and exactly that aligned gradient (a linear surrogate in the parameters),
    so the usual backward/step applies. It costs two extra backward passes per step. Under DDP the
    projection uses each process's local gradients before averaging; under fp16 loss scaling the
    separate gradients are unscaled. No divergence slot: BinaryKL-Norm is the method.

    Published defaults (penghui-yang/DHKD README): CIFAR-100 gamma=1, alpha=1, T=2, nonlinear
    head, grad_align on; ImageNet ResNet34→18: alpha=0.1, linear head.
    """

    needs_features = True

    def __init__(
        self, *, temperature: float, gamma: float, alpha: float, aux_head: str, grad_align: bool, replicate_clamp: bool
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {temperature}")
        if aux_head not in AUX_HEADS:  # now, not when fitting starts
            raise ConfigError(f"DHKD objective.aux_head must be one of {AUX_HEADS}, got {aux_head!r}")
        self.temperature, self.gamma, self.alpha = temperature, gamma, alpha
        self.aux_kind = aux_head
        self.grad_align = grad_align
        self.replicate_clamp = replicate_clamp
        self.aux_head: nn.Module | None = None
        self.aligned_parameters: list[nn.Parameter] = []

    def prepare(self, context: PrepareContext) -> None:
        """Build the auxiliary head for the model's penultimate width; note what gradient alignment covers."""
        width = context.example_features(context.model)["penultimate"].shape[-1]
        self.aux_head = auxiliary_head(self.aux_kind, width, context.num_classes)
        if self.grad_align:
            self.aligned_parameters = list(context.trainable_parameters())

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.aux_head is None:
            raise RuntimeError("DHKD.prepare(context) must run before the loss (the module calls it when fitting starts)")
        ce = F.cross_entropy(outputs["logits"].float(), batch["label"])
        aux_logits = self.aux_head(outputs["features"]["penultimate"])
        kd = binary_kl_norm(aux_logits, outputs["teacher_logits"], self.temperature, self.replicate_clamp)
        weighted_ce, weighted_kd = self.gamma * ce, self.alpha * kd
        if self.grad_align and torch.is_grad_enabled():
            loss = aligned_loss(weighted_ce, weighted_kd, self.aligned_parameters)
        else:
            loss = weighted_ce + weighted_kd
        return loss, {"ce": ce.detach(), "binary_kl_norm": kd.detach()}


def aligned_loss(first: torch.Tensor, second: torch.Tensor, parameters: list[nn.Parameter]) -> torch.Tensor:
    """A loss with the value `first + second` whose gradient over `parameters` is `g1 + g2'`, where
    `g2' = g2 - min(g2·g1, 0) / ‖g1‖² · g1` (the second gradient projected off the first when they conflict)."""
    parameters = [p for p in parameters if p.requires_grad]
    g1, g2 = (_flat_grad(term, parameters) for term in (first, second))
    conflict = torch.clamp(g2 @ g1, max=0) / g1.square().sum().clamp_min(torch.finfo(g1.dtype).tiny)
    combined = g1 + g2 - conflict * g1
    surrogate = sum((p * g.view_as(p)).sum() for p, g in zip(parameters, combined.split([p.numel() for p in parameters])))
    return (first + second).detach() + surrogate - surrogate.detach()


def _flat_grad(term: torch.Tensor, parameters: list[nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(parameters, grads)])
