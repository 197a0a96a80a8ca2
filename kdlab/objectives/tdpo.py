"""TDPO — Token-level Direct Preference Optimization (Zeng et al., ICML 2024, arXiv 2404.11999).

Checked against the official code (Vance0124/Token-level-Direct-Preference-Optimization,
`trainers.py: tdpo_loss, _tdpo_get_batch_logps`), with one numerical change: the reference's
log-probabilities come from `log_softmax`, not `softmax(...).log()` (docs/methods.md §0.4 rule 4, §12.9).
"""

import torch
import torch.nn.functional as F

from kdlab.divergences import get
from kdlab.errors import ConfigError
from kdlab.objectives.base import FixedDivergence
from kdlab.objectives.preference import Pairs, PreferenceObjective
from kdlab.tokens import scored, token_logps

TDPO_VARIANTS = ("tdpo1", "tdpo2")
# SeqKL's per-token KL(π_ref ‖ π): the reference in the teacher slot, i.e. the library's forward KL.
TOKEN_KL = FixedDivergence("fkl", "the per-token KL(π_ref‖π) that SeqKL sums")


def sequential_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`SeqKL(y) = Σ_t m_t KL(π_ref(·|x, y_<t) ‖ π_θ(·|x, y_<t))`, exact over the vocabulary at every scored position.

    `policy_logits, ref_logits [N, L, V]`, `labels [N, L]` (`IGNORE_INDEX` = not scored) -> `[N]`. Reference first
    (a forward KL from the reference to the policy), causal shift as in `token_logps`; fp32 log-space.
    """
    mask = scored(labels[:, 1:])
    return get(TOKEN_KL.name)(policy_logits[:, :-1], ref_logits[:, :-1], mask=mask, reduction="none").sum(-1)


def tdpo_loss(
    chosen_log_ratio: torch.Tensor,
    rejected_log_ratio: torch.Tensor,
    chosen_seq_kl: torch.Tensor,
    rejected_seq_kl: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 0.5,
    variant: str = "tdpo2",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair `[B]`, with `u = ρ_w − ρ_l`:

    - TDPO1: `L = −log σ(β (u − (SeqKL(y_l) − SeqKL(y_w))))`;
    - TDPO2: `L = −log σ(β (u − α (SeqKL(y_l) − sg[SeqKL(y_w)])))` (stop-gradient on the chosen SeqKL).
    Returns `(losses, logits)`, the argument of σ being `logits`.
    """
    margin = chosen_log_ratio - rejected_log_ratio
    if variant == "tdpo1":
        logits = margin - (rejected_seq_kl - chosen_seq_kl)
    elif variant == "tdpo2":
        logits = margin - alpha * (rejected_seq_kl - chosen_seq_kl.detach())
    else:
        raise ValueError(f"TDPO variant must be one of {TDPO_VARIANTS}, got {variant!r}")
    logits = beta * logits
    return -F.logsigmoid(logits), logits


class TDPO(PreferenceObjective):
    """TDPO1/TDPO2 (see `tdpo_loss`), mean over pairs; needs the reference's full logits for SeqKL.

    Defaults (in the preset): β = 0.1, α = 0.5 from the official `config/loss/tdpo.yaml`; TDPO2 as the
    README recommends and the official loss function defaults to (that config has said TDPO1,
    `if_tdpo2: false`, since its commit f567175; docs/methods.md §8.4, §12.9). Implicit rewards `β (ρ + SeqKL)`
    as in the official code; the preference probability is `σ(logits)`.
    """

    divergence_slot = TOKEN_KL
    needs_reference_logits = True

    def __init__(self, *, beta: float, alpha: float, variant: str) -> None:
        super().__init__()
        if variant not in TDPO_VARIANTS:
            raise ConfigError(f"TDPO objective.variant must be one of {TDPO_VARIANTS}, got {variant!r}")
        if beta <= 0:
            raise ConfigError(f"objective.beta must be > 0, got {beta}")
        self.beta, self.alpha, self.variant = beta, alpha, variant

    def pairs(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> Pairs:
        logps, _ = token_logps(outputs["logits"], batch["labels"])
        ref_logps, _ = token_logps(outputs["ref_logits"], batch["labels"])
        policy = logps.sum(-1)
        ratio = policy - ref_logps.sum(-1)
        seq_kl = sequential_kl(outputs["logits"], outputs["ref_logits"], batch["labels"])
        (ratio_w, ratio_l), (kl_w, kl_l) = ratio.chunk(2), seq_kl.chunk(2)
        losses, logits = tdpo_loss(ratio_w, ratio_l, kl_w, kl_l, self.beta, self.alpha, self.variant)
        rewards = self.beta * (ratio + seq_kl).detach()
        return Pairs(losses, *rewards.chunk(2), torch.sigmoid(logits.detach()), *policy.detach().chunk(2))
