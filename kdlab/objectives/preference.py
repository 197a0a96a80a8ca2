"""Preference alignment against a frozen reference: DPO, f-DPO, IPO, and the SFT starting stage.

Notation (docs/methods.md §0.3, §8). A batch of B preference pairs `(x, y_w, y_l)` is stacked as 2B
sequences: rows `[0, B)` hold prompt + chosen response y_w, rows `[B, 2B)` prompt + rejected
response y_l. `labels [2B, L]` are the input ids with `IGNORE_INDEX` on prompt and padding, so every
sum below runs over response tokens only. With the causal shift (logits at t predict token t+1):

    log π(y|x) = Σ_t m_t log π(y_t | x, y_<t),      ρ(y) = log π_θ(y|x) − log π_ref(y|x)

Objectives read `outputs["logits"]` (the policy's `[2B, L, V]`) and `outputs["ref_logps"]` (the
reference's sequence log-probs `[2B]`, computed without grad or cached by `PolicyModule`), and
`batch["labels"]`. `pairs(outputs, batch)` gives per-pair losses, the implicit rewards and the
probability that the method's own preference model puts on y_w ≻ y_l; `forward` averages the
losses and names the logged terms.
"""

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from kdlab.divergences import Divergence, get
from kdlab.errors import ConfigError
from kdlab.objectives.base import FixedDivergence, Objective, OpenSlot
from kdlab.tokens import mean_nll, token_logps

# f-DPO needs an f whose derivative is invertible with 0 outside its domain (Wang et al. 2023, Thm 1):
F_DPO_DIVERGENCES = ("rkl", "fkl", "js", "alpha")
F_DPO_SLOT = OpenSlot(F_DPO_DIVERGENCES)
# The KL(π‖π_ref) of the RLHF objective that DPO and IPO are derived from: the reference is the teacher slot.
POLICY_KL = FixedDivergence("rkl", "KL(π‖π_ref), the regulariser of the objective the method is derived from")


class Pairs(NamedTuple):
    """Per-pair results of a preference objective, each `[B]`."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor  # implicit reward of y_w (detached)
    rejected_rewards: torch.Tensor  # implicit reward of y_l (detached)
    probability: torch.Tensor  # P(y_w ≻ y_l) under the method's preference model (detached)
    chosen_logps: torch.Tensor  # log π_θ(y_w|x) (detached)
    rejected_logps: torch.Tensor  # log π_θ(y_l|x) (detached)


def fdpo_score(log_ratio: torch.Tensor, divergence: str, alpha: float = 0.5, exp_clamp: float = 80.0) -> torch.Tensor:
    """`s(ρ) = f'(e^ρ)` up to an additive constant, for the regulariser `D_f(π_θ ‖ π_ref)` (docs/methods.md §1.8, §8.3).

    - `rkl` (f = u log u, KL(π‖π_ref), DPO):      s(ρ) = ρ
    - `fkl` (f = −log u, KL(π_ref‖π)):            s(ρ) = −exp(−ρ)
    - `js`  (f = u log u − (u+1) log((u+1)/2)):    s(ρ) = log σ(ρ)          (f' = log(2u/(1+u)))
    - `alpha`, α ∈ (0, 1) (paper form, f' = (1 − u^{−α})/α):  s(ρ) = −exp(−αρ)/α;
      α → 0 approaches reverse KL, α = 1 is forward KL.
    Written in `ρ = log u`, never in u; the exponent is clamped at `exp_clamp` (80 in fp32/bf16,
    11 in fp16) against overflow, as TRL does. `divergence` is a canonical registry name.
    """
    if divergence == "rkl":
        return log_ratio
    if divergence == "fkl":
        return -torch.exp((-log_ratio).clamp(max=exp_clamp))
    if divergence == "js":
        return F.logsigmoid(log_ratio)
    if divergence == "alpha":
        if not 0.0 < alpha < 1.0:
            raise ConfigError(f"f-DPO's alpha-divergence needs 0 < divergence.alpha < 1, got {alpha}")
        return -torch.exp((-alpha * log_ratio).clamp(max=exp_clamp)) / alpha
    raise ConfigError(
        f"f-DPO supports the divergences {', '.join(F_DPO_DIVERGENCES)} (an invertible f' with 0 outside "
        f"its domain, Wang et al. 2023), got {divergence!r}"
    )


def dpo_loss(
    chosen_log_ratio: torch.Tensor,
    rejected_log_ratio: torch.Tensor,
    beta: float = 0.1,
    divergence: str = "rkl",
    alpha: float = 0.5,
    exp_clamp: float = 80.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f-DPO (Wang et al. 2023, arXiv 2309.16240); with `divergence="rkl"` exactly DPO (Rafailov et al. 2023).

    `L = −log σ(β (s(ρ_w) − s(ρ_l)))` per pair, `s` = `fdpo_score`. Inputs `ρ_w, ρ_l [B]`;
    returns `(losses [B], logits [B])` with `logits = β (s(ρ_w) − s(ρ_l))`, the Bradley–Terry
    logit of the implied preference P(y_w ≻ y_l) = σ(logits).
    """
    logits = beta * (
        fdpo_score(chosen_log_ratio, divergence, alpha, exp_clamp) - fdpo_score(rejected_log_ratio, divergence, alpha, exp_clamp)
    )
    return -F.logsigmoid(logits), logits


def ipo_loss(chosen_log_ratio: torch.Tensor, rejected_log_ratio: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17): `L = (h − 1/(2τ))²`, `h = ρ_w − ρ_l`, per pair `[B]`.

    Length normalisation (TRL's form) is the caller's choice: pass `ρ/|y|` instead of `ρ`.
    """
    return (chosen_log_ratio - rejected_log_ratio - 1.0 / (2.0 * tau)) ** 2


class PreferenceObjective(Objective):
    """Base of the pairwise objectives: `forward` = mean of `pairs(...).losses`, plus the logged terms
    `rewards/chosen`, `rewards/rejected`, `rewards/margin`, `rewards/accuracy`, `logps/chosen`, `logps/rejected`.

    `needs_reference`: the module must supply `outputs["ref_logps"]`; `needs_reference_logits`:
    also the reference's full logits `outputs["ref_logits"] [2B, L, V]` (then they cannot be cached).
    """

    needs_reference: ClassVar[bool] = True
    needs_reference_logits: ClassVar[bool] = False

    def pairs(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> Pairs:
        raise NotImplementedError

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pairs = self.pairs(outputs, batch)
        margin = pairs.chosen_rewards - pairs.rejected_rewards
        return pairs.losses.mean(), {
            "rewards/chosen": pairs.chosen_rewards.mean(),
            "rewards/rejected": pairs.rejected_rewards.mean(),
            "rewards/margin": margin.mean(),
            "rewards/accuracy": (pairs.probability > 0.5).float().mean(),
            "logps/chosen": pairs.chosen_logps.mean(),
            "logps/rejected": pairs.rejected_logps.mean(),
        }


def _log_ratios(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(ρ [2B], log π_θ(y|x) [2B], response lengths [2B])` of the stacked chosen/rejected rows."""
    logps, mask = token_logps(outputs["logits"], batch["labels"])
    policy = logps.sum(-1)
    return policy - outputs["ref_logps"].to(policy.dtype), policy, mask.sum(-1)


class FDPO(PreferenceObjective):
    """f-DPO: `L = −log σ(β (s(ρ_w) − s(ρ_l)))` (see `dpo_loss`), mean over pairs, with the regulariser
    `D_f(π‖π_ref)` from the divergence slot: rkl (= DPO), fkl, js or alpha (its `alpha` parameter).

    Defaults (conf/method/fdpo.yaml): β = 0.1 (TRL); f-DPO's paper grid for the α-divergence is
    α ∈ {0.3, 0.5, 0.7}. TRL's `f_alpha_divergence_coef` α' since its 2026 refactor implements
    f' = (u^{α'−1} − 1)/(α' − 1), i.e. paper α = 1 − α' (equal at 0.5) (docs/methods.md §12.2).
    Implicit rewards `β ρ` (TRL's convention, for every f); the preference probability is `σ(logits)`.
    """

    divergence_slot = F_DPO_SLOT

    def __init__(self, divergence: Divergence, *, beta: float, exp_clamp: float) -> None:
        super().__init__()
        if beta <= 0:
            raise ConfigError(f"objective.beta must be > 0, got {beta}")
        self.divergence = F_DPO_SLOT.bind("f-DPO", divergence)
        self.alpha = self.divergence.params.get("alpha")
        fdpo_score(torch.zeros(1), self.divergence.name, self.alpha)  # a bad alpha fails here, before training
        self.beta, self.exp_clamp = beta, exp_clamp

    def pairs(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> Pairs:
        ratio, policy, _ = _log_ratios(outputs, batch)
        chosen, rejected = ratio.chunk(2)
        losses, logits = dpo_loss(chosen, rejected, self.beta, self.divergence.name, self.alpha, self.exp_clamp)
        return Pairs(losses, self.beta * chosen.detach(), self.beta * rejected.detach(), torch.sigmoid(logits.detach()),
                     *policy.detach().chunk(2))


class DPO(FDPO):
    """DPO (Rafailov et al. 2023): f-DPO with the reverse KL fixed, `L = −log σ(β (ρ_w − ρ_l))`.
    β = 0.1 (DPO paper, TRL; conf/method/dpo.yaml)."""

    divergence_slot = POLICY_KL

    def __init__(self, *, beta: float) -> None:
        super().__init__(get("rkl"), beta=beta, exp_clamp=math.inf)  # s(ρ) = ρ: nothing to clamp


class IPO(PreferenceObjective):
    """IPO: `L = (h − 1/(2τ))²` (see `ipo_loss`), mean over pairs; τ = 0.1 (TRL's `beta`).

    `length_normalize=False` (default) is the paper's form, `h = ρ_w − ρ_l`; `True` is TRL's
    (author-confirmed) form `h = ρ_w/|y_w| − ρ_l/|y_l|` (docs/methods.md §12.3). IPO's population optimum
    is `h = (2p − 1)/(2τ)`, so the implied preference is `P(y_w ≻ y_l) = clip(1/2 + τ h, 0, 1)`.
    Implicit rewards `τ ρ`. Its regulariser is the reverse KL(π‖π_ref) (fixed).
    """

    divergence_slot = POLICY_KL

    def __init__(self, *, tau: float, length_normalize: bool) -> None:
        super().__init__()
        if tau <= 0:
            raise ConfigError(f"objective.tau must be > 0, got {tau}")
        self.tau, self.length_normalize = tau, length_normalize

    def pairs(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> Pairs:
        ratio, policy, lengths = _log_ratios(outputs, batch)
        scores = ratio / lengths.clamp(min=1) if self.length_normalize else ratio
        chosen, rejected = scores.chunk(2)
        losses = ipo_loss(chosen, rejected, self.tau)
        probability = (0.5 + self.tau * (chosen - rejected).detach()).clamp(0.0, 1.0)
        ratio_w, ratio_l = ratio.detach().chunk(2)
        return Pairs(losses, self.tau * ratio_w, self.tau * ratio_l, probability, *policy.detach().chunk(2))


class SFT(Objective):
    """Supervised fine-tuning, the stage every preference method starts from: the negative
    log-likelihood of the response tokens, `Σ_{n,t} m_{n,t} (−log π_θ(y_t|x, y_<t)) / Σ m` (token mean).

    On a preference batch (2B stacked rows) the chosen half is trained (the TDPO/DPO pipelines'
    SFT on chosen responses). No divergence slot, no reference.
    """

    needs_reference: ClassVar[bool] = False
    needs_reference_logits: ClassVar[bool] = False

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, labels = outputs["logits"], batch["labels"]
        nll = mean_nll(logits[: len(logits) // 2], labels[: len(labels) // 2])
        return nll, {"nll": nll.detach()}
