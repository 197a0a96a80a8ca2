"""TGeo-KD: a sample-wise fusion ratio of label and teacher, learned from the student/teacher/label geometry
by a one-step look-ahead bilevel update on a held-out split (Hu, Wu et al., ICLR 2024, arXiv 2312.15112;
docs/methods.md §2.8).

No official code is public. The structure (per-sample ratio from the trilateral geometry, bilevel
optimisation on held-out data) is the paper's; the exact features, the network, the held-out split,
the look-ahead step and the outer optimiser are kdlab's assumptions [unverified], each a flag.
"""

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from kdlab.divergences import REGISTRY, Divergence
from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, OpenSlot, PrepareContext

# The fusion weighs each sample's divergence: only per-sample divergences fit (not batch-level Sinkhorn).
PER_SAMPLE = tuple(name for name, fn in REGISTRY.items() if not fn.batch_level)


def geometry_features(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor, class_means: torch.Tensor | None
) -> torch.Tensor:
    """Δ_i: the edges of the triangle of student S = q_i, teacher T = p_i and ground truth G = e_{y_i}
    (`q − p`, `q − e_y`, `p − e_y`), and with `class_means` `[C, C]` (the teacher's mean prediction per
    class, T̄) the inter-sample edges `q − T̄_{y_i}`, `p − T̄_{y_i}`. Inputs `[B, C]`; output `[B, 3C]` or `[B, 5C]`."""
    one_hot = F.one_hot(labels, student_probs.shape[-1]).to(student_probs.dtype)
    edges = [student_probs - teacher_probs, student_probs - one_hot, teacher_probs - one_hot]
    if class_means is not None:
        mean = class_means[labels]
        edges += [student_probs - mean, teacher_probs - mean]
    return torch.cat(edges, dim=-1)


def fusion_network(in_features: int, hidden: int) -> nn.Sequential:
    """g_ω: Linear(in, hidden) → ReLU → Linear(hidden, 1); the last layer starts at zero, so every α starts at ½."""
    network = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    nn.init.zeros_(network[2].weight)
    nn.init.zeros_(network[2].bias)
    return network


@torch.no_grad()
def teacher_class_means(teacher: nn.Module, loader: Iterable[dict[str, torch.Tensor]], num_classes: int, device: torch.device) -> torch.Tensor:
    """T̄ `[C, C]`: row y is the teacher's mean softmax prediction (eval mode) over the samples of class y."""
    was_training = teacher.training
    teacher.eval()
    sums = torch.zeros(num_classes, num_classes, device=device)
    counts = torch.zeros(num_classes, device=device)
    for batch in loader:
        labels = batch["label"].to(device)
        sums.index_add_(0, labels, teacher(batch["input"].to(device)).float().softmax(dim=-1))
        counts += torch.bincount(labels, minlength=num_classes)
    teacher.train(was_training)
    if (counts == 0).any():
        raise ConfigError(f"TGeo-KD's class-mean teacher predictions need samples of every class; none for {(counts == 0).nonzero().flatten().tolist()}")
    return sums / counts[:, None]


class TGeoKD(Objective):
    """`L = mean_{i ∉ H} [(1 − α_i) · CE(y_i, q_i) + α_i · T² · D(p_i^T ‖ q_i^T)]`, `α_i = σ(g_ω(Δ_i))`,

    on logits `[B, C]`, labels `[B]` and dataset indices `[B]`; `D` is the divergence slot (KL in the
    paper; any per-sample divergence), `Δ_i` = `geometry_features` of the T = 1 predictions (a constant
    input of g_ω). `H` is a held-out split of the training set: `held_out_fraction` of its samples,
    drawn once with `split_seed`, never trained on; the rows of a batch that fall in it serve the
    outer problem only.

    Each step first updates ω (the bilevel outer step): the student's one-step look-ahead
    `θ'(ω) = θ − lookahead_lr · ∇_θ L(θ, ω)` on the batch's training rows, then the cross-entropy of
    the look-ahead student on the batch's held-out rows, differentiated through θ'(ω) (second order),
    drives one Adam step of ω with `outer_lr`. Then the student's loss is taken with the updated,
    detached α, so the student's optimiser never moves ω and ω never follows the student's loss.
    The look-ahead runs on copies of the student's buffers (batch-norm statistics are not touched).
    g_ω's weights are checkpointed; its Adam moments are not (a resumed run restarts them). One
    process only: under DDP each process would update its own ω.

    All defaults are [unverified] (docs/methods.md §2.8, §13): T = 4, hidden 64, held-out 10%,
    outer lr 1e-3, look-ahead lr 0.05, inter-sample edges on.
    """

    divergence_slot = OpenSlot(PER_SAMPLE)
    reads_training_set = True  # prepare: a held-out split of the training set and the teacher's class means over it

    def __init__(
        self,
        divergence: Divergence,
        *,
        temperature: float,
        hidden: int,
        held_out_fraction: float,
        outer_lr: float,
        lookahead_lr: float,
        inter_sample: bool,
        split_seed: int,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {temperature}")
        if not 0 < held_out_fraction < 1:
            raise ConfigError(f"objective.held_out_fraction must be in (0, 1), got {held_out_fraction}")
        if hidden < 1 or outer_lr <= 0 or lookahead_lr <= 0:
            raise ConfigError(f"objective.hidden >= 1, objective.outer_lr > 0 and objective.lookahead_lr > 0 are needed, got {hidden}, {outer_lr}, {lookahead_lr}")
        self.divergence = self.divergence_slot.bind("TGeoKD", divergence)
        self.temperature, self.hidden, self.held_out_fraction = temperature, hidden, held_out_fraction
        self.outer_lr, self.lookahead_lr, self.inter_sample, self.split_seed = outer_lr, lookahead_lr, inter_sample, split_seed
        self.fusion: nn.Module | None = None
        self.outer_optimizer: torch.optim.Optimizer | None = None
        self.students: list[nn.Module] = []  # the trained model, unregistered (its parameters are the module's)
        self.register_buffer("held_out", None, persistent=False)  # [N_train] bool
        self.register_buffer("class_means", None, persistent=False)  # [C, C]

    def prepare(self, context: PrepareContext) -> None:
        """Draw the held-out split, compute the teacher's class means and build g_ω."""
        if context.teacher is None:
            raise ConfigError("TGeo-KD fuses a teacher's predictions with the labels: it needs a regime with a teacher")
        loader = context.train_loader()
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise ConfigError("TGeo-KD holds out part of the training set: it needs a training DataLoader over a dataset with a length")
        size = len(dataset)
        count = round(self.held_out_fraction * size)
        if not 0 < count < size:
            raise ConfigError(f"objective.held_out_fraction={self.held_out_fraction} of {size} training samples leaves no held-out or no training sample")
        chosen = torch.randperm(size, generator=torch.Generator().manual_seed(self.split_seed))[:count]
        self.held_out = torch.zeros(size, dtype=torch.bool).index_fill_(0, chosen, True)
        if self.inter_sample:
            with torch.random.fork_rng(devices=[]):
                self.class_means = teacher_class_means(context.teacher.to(context.device), loader, context.num_classes, context.device)
        features = (5 if self.inter_sample else 3) * context.num_classes
        self.fusion = fusion_network(features, self.hidden)
        self.outer_optimizer = None  # made on the training device at the first step
        self.students = [context.model]

    def per_sample_terms(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(CE_i, T² D_i)`, each `[B]`."""
        ce = F.cross_entropy(student.float(), labels, reduction="none")
        kd = self.temperature**2 * self.divergence(student, teacher, temperature=self.temperature, reduction="none")
        return ce, kd

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.fusion is None:
            raise RuntimeError("TGeoKD.prepare(context) must run before the loss (the module calls it when fitting starts)")
        student, teacher, labels = outputs["logits"], outputs["teacher_logits"], batch["label"]
        held = self.held_out[batch["index"].to(self.held_out.device)].to(labels.device)
        train = ~held
        with torch.no_grad():
            delta = geometry_features(student.float().softmax(-1), teacher.float().softmax(-1), labels, self.class_means)
        ce, kd = self.per_sample_terms(student, teacher, labels)
        logs: dict[str, torch.Tensor] = {}
        if torch.is_grad_enabled() and held.any() and train.any():
            logs["tgeo_outer_ce"] = self.outer_step(ce[train], kd[train], delta[train], batch["input"][held], labels[held])
        with torch.no_grad():
            alpha = torch.sigmoid(self.fusion(delta)).squeeze(-1)
        if not train.any():  # a batch of held-out samples only: nothing to train on
            return student.sum() * 0.0, logs
        loss = ((1 - alpha) * ce + alpha * kd)[train].mean()
        return loss, logs | {"ce": ce[train].mean().detach(), "kd": kd[train].mean().detach(), "tgeo_alpha": alpha[train].mean()}

    def outer_step(self, ce: torch.Tensor, kd: torch.Tensor, delta: torch.Tensor, held_inputs: torch.Tensor, held_labels: torch.Tensor) -> torch.Tensor:
        """One Adam step of ω on `lookahead_outer_loss`; returns that held-out cross-entropy."""
        outer = lookahead_outer_loss(self.students[0], self.fusion, ce, kd, delta, held_inputs, held_labels, self.lookahead_lr)
        weights = list(self.fusion.parameters())
        if self.outer_optimizer is None:
            self.outer_optimizer = torch.optim.Adam(weights, lr=self.outer_lr)
        # retain_graph: the student's loss is differentiated through the same forward pass afterwards
        for weight, grad in zip(weights, torch.autograd.grad(outer, weights, retain_graph=True)):
            weight.grad = grad
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        return outer.detach()


def lookahead_outer_loss(
    model: nn.Module, fusion: nn.Module, ce: torch.Tensor, kd: torch.Tensor, delta: torch.Tensor,
    held_inputs: torch.Tensor, held_labels: torch.Tensor, lookahead_lr: float,
) -> torch.Tensor:
    """`CE(y_H, f(x_H; θ'(ω)))` with `θ'(ω) = θ − η ∇_θ mean_i[(1 − α_i(ω)) ce_i + α_i(ω) kd_i]`, differentiable in ω.

    `ce`, `kd` `[N]` are the per-sample terms of the training rows, computed from `model`'s current
    parameters θ (their graph reaches θ); `delta` `[N, F]` the fusion inputs; `held_*` the held-out rows.
    The look-ahead forward runs on copies of `model`'s buffers."""
    names, params = zip(*[(name, p) for name, p in model.named_parameters() if p.requires_grad])
    alpha = torch.sigmoid(fusion(delta)).squeeze(-1)
    inner = ((1 - alpha) * ce + alpha * kd).mean()
    grads = torch.autograd.grad(inner, params, create_graph=True, allow_unused=True)
    lookahead = {name: p if g is None else p - lookahead_lr * g for name, p, g in zip(names, params, grads)}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    return F.cross_entropy(functional_call(model, {**lookahead, **buffers}, (held_inputs,)).float(), held_labels)
