"""SinKD, classification form (Cui et al., LREC-COLING 2024, arXiv 2402.17110): KD plus a batch-wise Sinkhorn distance."""

from typing import Any

import torch
import torch.nn.functional as F

from kdlab.divergences import Divergence, get
from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, OpenSlot

MODES = ("code_faithful", "paper_clean")


class SinKD(Objective):
    """`L = (1 - alpha) · CE(y, z_s) + alpha · KD_T + sinkhorn_weight · L_SinKD` on logits `[B, C]`.

    `L_SinKD` treats the batch's B student distributions `softmax(z_s/tau)` and B teacher
    distributions `softmax(z_t/tau)` as two point clouds on the simplex and transports one onto the
    other: cost `C_ij = ‖q_i - p_j‖` (`cost`, L1 in the code), entropic plan `P` after `n_iters`
    Sinkhorn iterations with regulariser `epsilon`, distance `⟨P, C⟩` — computed by
    `kdlab.divergences.sinkhorn` (variant `cuturi_primal`), gradients through the cost and the
    unrolled plan unless `detach_plan`.

    - `code_faithful` (2018cx/SinKD `loss.py`): plain-domain iterations on a plan normalised to unit
      row and column sums (total mass B), so `L_SinKD = scale · B · ⟨P_uniform, C⟩` (the library's
      `reduction="sum"`); `KD_T = D(p_T ‖ q_T)` without T². The code's KD term is the cross-entropy
      `-Σ p_T log q_T`; for forward KL that differs from `D` only by the teacher's entropy, a
      constant with zero gradient.
    - `paper_clean`: log-domain iterations with marginals `1/B`, `L_SinKD = scale · ⟨P_uniform, C⟩`
      (the code's value / B after the same iterations), and `KD_T = T² · D(p_T ‖ q_T)`.

    `D` is the divergence slot of the KD term (any registered divergence; forward KL in the paper). Published values (code and SST-2 script):
    tau=2, epsilon=0.1, n_iters=20, L1 cost, scale=1e-3, alpha=0.9, T=2, sinkhorn_weight=0.8. With
    epsilon > 0 the plan is not diagonal, so `L_SinKD > 0` even when student equals teacher.
    """

    divergence_slot = OpenSlot()

    def __init__(
        self,
        divergence: Divergence,
        *,
        mode: str,
        alpha: float,
        temperature: float,
        sinkhorn_weight: float,
        tau: float,
        epsilon: float,
        n_iters: int,
        cost: str,
        scale: float,
        detach_plan: bool,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"SinKD objective.mode must be one of {MODES}, got {mode!r}")
        if temperature <= 0 or tau <= 0:
            raise ConfigError(f"objective.temperature and objective.tau must be > 0, got {temperature}, {tau}")
        self.divergence = self.divergence_slot.bind("SinKD", divergence)
        self.mode = mode
        self.alpha, self.temperature, self.sinkhorn_weight = alpha, temperature, sinkhorn_weight
        self.tau, self.scale = tau, scale
        domain = "plain" if mode == "code_faithful" else "log"
        self.sinkhorn = get("sinkhorn", epsilon=epsilon, n_iters=n_iters, cost=cost, domain=domain, detach_plan=detach_plan)
        self.sinkhorn_reduction = "sum" if mode == "code_faithful" else "mean"  # B·⟨P, C⟩ or ⟨P, C⟩

    def forward(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student, teacher = outputs["logits"], outputs["teacher_logits"]
        ce = F.cross_entropy(student.float(), batch["label"])
        kd = self.divergence(student, teacher, temperature=self.temperature)
        sinkhorn = self.scale * self.sinkhorn(student, teacher, temperature=self.tau, reduction=self.sinkhorn_reduction)
        if self.mode == "paper_clean":
            kd = self.temperature**2 * kd
        loss = (1 - self.alpha) * ce + self.alpha * kd + self.sinkhorn_weight * sinkhorn
        return loss, {"ce": ce.detach(), "kd": kd.detach(), "sinkhorn": sinkhorn.detach()}
