"""MCMI: fine-tune a teacher to maximise log-likelihood and conditional mutual information (ICLR 2024,
arXiv 2401.08732; official code iclr2024mcmi/ICLRMCMI `CIFAT-100KD`; docs/methods.md §6.1, §12.7).

A teacher recipe, not a student method: `teacher.recipe=mcmi` fine-tunes the cached maximum-likelihood
teacher with `MCMI` (`kdlab.teachers`), and any student method then distils from it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, PrepareContext

CENTROID_UPDATES = ("once", "per_epoch", "ema")
CENTROID_MODES = ("train", "eval")


@dataclass(frozen=True)
class CentroidStatistics:
    """What one pass of a model over a labelled set gives.

    `centroids` `[C, C]`: row y is `Q_y = Σ_{i: y_i = y} P_i / n_y`, the mean predicted distribution
    `P_i = softmax(z(x_i))` of class y; `cmi`: `(1/N) Σ_i KL(P_i ‖ Q_{y_i})`, the conditional mutual
    information `I(X; Ŷ | Y)` of the predictions, computed in the same pass as
    `(1/N) [Σ_y n_y H(Q_y) − Σ_i H(P_i)]` (exact: `Σ_{i∈y} P_i log Q_y = n_y Σ_c Q_yc log Q_yc`).
    """

    centroids: torch.Tensor
    cmi: float


@torch.no_grad()
def centroid_statistics(
    model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], num_classes: int, device: torch.device, mode: str = "eval",
    every_class: bool = True,
) -> CentroidStatistics:
    """`CentroidStatistics` of `model` over `loader` (batches `{"input", "label"}`; the input a tensor or a dict of them), with the model in
    `mode` ("eval", or "train" as the code's centroid pass: batch-norm batch statistics, and the running
    statistics updated). With `every_class`, a class without a sample is a ConfigError (MCMI's loss
    needs its centroid); otherwise its centroid is zero and it adds nothing to the CMI (a logged statistic)."""
    from lightning.fabric.utilities.apply_func import move_data_to_device  # here: reading the method catalogue loads no Lightning

    was_training = model.training
    model.train(mode == "train")
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    entropy = torch.zeros((), dtype=torch.float64, device=device)
    for batch in loader:
        log_p = model(move_data_to_device(batch["input"], device)).double().log_softmax(dim=-1)
        labels = batch["label"].to(device)
        sums.index_add_(0, labels, log_p.exp())
        counts += torch.bincount(labels, minlength=num_classes).double()
        entropy -= torch.special.xlogy(log_p.exp(), log_p.exp()).sum()
    model.train(was_training)
    if every_class and (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ConfigError(f"MCMI class centroids need training samples of every class; none for classes {missing}")
    centroids = sums / counts.clamp_min(1)[:, None]
    centroid_entropy = -torch.special.xlogy(centroids, centroids).sum(dim=-1)
    cmi = ((counts * centroid_entropy).sum() - entropy) / counts.sum()
    return CentroidStatistics(centroids.float(), float(cmi))


class MCMI(Objective):
    """`L = CE(y, P_x) − weight · KL(P_x ‖ Q_y)` (mean over the batch) on the teacher's logits `[B, C]`.

    `P_x = softmax(z)`, `Q_y` the class centroid of the label (a constant, `CentroidStatistics`):
    maximising log-likelihood and the conditional mutual information together (the code's
    `CE_KL_loss` with coefficients `[1, −λ]`). `centroid_update`: `once` (the code: computed when
    fitting starts), `per_epoch` (recomputed over the training set at the start of every epoch) or
    `ema` (after each step, `Q_c ← d·Q_c + (1 − d)·mean_{i: y_i = c} P_i` for the classes of the batch,
    rows renormalised; the code's commented-out update, here on the training batch's own predictions).
    `centroid_mode`: the model's mode in the centroid passes (`train`, as the code; `eval`).

    No divergence slot: the KL to the centroid is the quantity the method maximises. Published
    defaults (ICLRMCMI `FineTuneTeacher.py`, CIFAR-100): λ ∈ {0.15, 0.2, 0.25}, 20 epochs.
    """

    def __init__(self, *, weight: float, centroid_update: str, ema_decay: float, centroid_mode: str) -> None:
        super().__init__()
        if weight < 0:
            raise ConfigError(f"teacher.mcmi.objective.weight (λ) must be >= 0, got {weight}")
        if centroid_update not in CENTROID_UPDATES:
            raise ConfigError(f"teacher.mcmi.objective.centroid_update must be one of {CENTROID_UPDATES}, got {centroid_update!r}")
        if centroid_mode not in CENTROID_MODES:
            raise ConfigError(f"teacher.mcmi.objective.centroid_mode must be one of {CENTROID_MODES}, got {centroid_mode!r}")
        if not 0 <= ema_decay < 1:
            raise ConfigError(f"teacher.mcmi.objective.ema_decay must be in [0, 1), got {ema_decay}")
        self.weight, self.centroid_update, self.ema_decay, self.centroid_mode = weight, centroid_update, ema_decay, centroid_mode
        self.register_buffer("centroids", None, persistent=False)  # [C, C], set in `prepare`
        self.centroid_epoch = 0
        self.recompute: Callable[[], CentroidStatistics] | None = None

    def prepare(self, context: PrepareContext) -> None:
        """Compute the centroids of the model being fine-tuned over the training set."""

        def recompute() -> CentroidStatistics:
            with torch.random.fork_rng(devices=[]):  # the pass leaves training's random state as it was
                return centroid_statistics(context.model, context.train_loader(), context.num_classes, context.device, self.centroid_mode)

        self.recompute = recompute
        self.centroids = recompute().centroids
        self.centroid_epoch = 0

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.centroids is None or self.recompute is None:
            raise RuntimeError("MCMI.prepare(context) must run before the loss (the module calls it when fitting starts)")
        epoch = outputs["progress"].epoch
        if self.centroid_update == "per_epoch" and epoch != self.centroid_epoch:
            self.centroids, self.centroid_epoch = self.recompute().centroids.to(self.centroids.device), epoch
        logits, labels = outputs["logits"].float(), batch["label"]
        log_p = logits.log_softmax(dim=-1)
        log_q = self.centroids[labels].clamp_min(torch.finfo(torch.float32).tiny).log()
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
        ce = F.nll_loss(log_p, labels)
        if self.centroid_update == "ema":
            self.ema_step(log_p.detach().exp(), labels)
        return ce - self.weight * kl, {"ce": ce.detach(), "cmi_batch": kl.detach()}

    @torch.no_grad()
    def ema_step(self, probabilities: torch.Tensor, labels: torch.Tensor) -> None:
        """`Q_c ← d·Q_c + (1 − d)·mean_{i: y_i = c} P_i` for every class c of the batch; rows renormalised."""
        num_classes = self.centroids.shape[0]
        sums = torch.zeros_like(self.centroids).index_add_(0, labels, probabilities.to(self.centroids.dtype))
        counts = torch.bincount(labels, minlength=num_classes).to(self.centroids.dtype)
        present = counts > 0
        means = sums[present] / counts[present, None]
        updated = self.ema_decay * self.centroids[present] + (1 - self.ema_decay) * means
        self.centroids[present] = updated / updated.sum(dim=-1, keepdim=True)
