"""SparsePO — "SparsePO: Controlling Preference Alignment of LLMs via Sparse Token Masks" (Christopoulou,
Cardenas, Lampouras, Bou-Ammar, Wang, arXiv 2410.05102), with MaPO's activation masks; docs/methods.md §8.5.
Checked against the official code (huawei-noah/HEBO `SparsePO/src/trainers/sparse_trainer.py`
`get_batch_loss_metrics`, `mapo_trainer.py` `apply_activation_mapping`, `src/masks/mask_models.py`
`SimpleMaskAllLayers`, `pipeline_gpt2.py`).

Per response token t of y (causal shift as `kdlab.tokens.token_logps`), with masks M^u_t, M^d_t ≥ 0:
`u = Σ_t M^u_t (ℓ^θ_t − ℓ^ref_t)` over y_w minus the same over y_l, `d = Σ_t M^d_t k_t` over y_w minus
over y_l with `k_t = Σ_v π_ref(v) (log π_θ(v) − log π_ref(v)) = −KL(π_ref‖π_θ)_t`, and

    L = −log σ(β (u − d)) + λ_u (‖M^u(y_w)‖₁ + ‖M^u(y_l)‖₁) + λ_d (‖M^d(y_w)‖₁ + ‖M^d(y_l)‖₁)

per pair (norms over the response tokens). `objective.mask`:
- `learned` (the paper's "sparse", `mask_model=simple_all`): a network on the **reference's** hidden
  states of every layer (1..L, HF `hidden_states[1:]`, at the positions that predict the tokens): one
  LayerNorm shared by the layers, per layer Linear(d, 1) → ReLU → Dropout, a bias-free Linear(L, 1)
  mixer → ReLU → Dropout; `independent=false` ("common"): one mask for u and d and, as the official
  code does, λ_u and λ_d halved (the common mask is counted in both norms); `true`: two networks;
- `mapo`: M^u = M^d = the mean over the reference's hidden states (all L + 1 of HF's
  `hidden_states`) of the per-sequence min–max rescaling to [0, 1] over the response tokens of each
  state's mean over its features (the official `zn_rescale`, whose z-normalisation cancels in the
  min–max rescaling; a sequence whose values are all equal gets mask 1); no parameters, no λ. The
  official MaPO also hooks attention and MLP activations and the logits; kdlab reads the residual
  stream only;
- `ones`: M ≡ 1 — exactly TDPO1 (`kdlab.objectives.tdpo`) when λ = 0 (tested).
Implicit rewards, as the official code: `β (Σ M^u (ℓ^θ − ℓ^ref) + Σ M^d k)` per response.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.divergences import get
from kdlab.errors import ConfigError
from kdlab.objectives.base import PrepareContext
from kdlab.objectives.preference import Pairs, PreferenceObjective
from kdlab.objectives.tdpo import TOKEN_KL
from kdlab.tokens import at_least_fp32, token_logps

MASKS = ("learned", "mapo", "ones")


class MaskNetwork(nn.Module):
    """SparsePO's `simple_all` mask: `[L] x [N, T, d]` hidden states -> `[N, T]` non-negative weights."""

    def __init__(self, hidden_size: int, layers: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.per_layer = nn.ModuleList([nn.Linear(hidden_size, 1) for _ in range(layers)])
        self.mixer = nn.Linear(layers, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: list[Tensor]) -> Tensor:
        scores = [self.dropout(F.relu(layer(self.norm(h)))) for layer, h in zip(self.per_layer, hidden_states)]
        return self.dropout(F.relu(self.mixer(torch.cat(scores, dim=-1)))).squeeze(-1)


def activation_mask(hidden_states: list[Tensor], mask: Tensor) -> Tensor:
    """MaPO's mask `[N, T]`: mean over the states of the min–max rescaled feature means over the `mask`ed tokens."""
    masks = []
    for h in hidden_states:
        values = at_least_fp32(h).mean(-1)
        low = values.masked_fill(~mask, torch.inf).amin(-1, keepdim=True)
        high = values.masked_fill(~mask, -torch.inf).amax(-1, keepdim=True)
        spread = high - low
        rescaled = torch.where(spread > 0, (values - low) / spread.clamp(min=torch.finfo(values.dtype).tiny), torch.ones_like(values))
        masks.append(rescaled * mask)
    return torch.stack(masks).mean(0)


class SparsePO(PreferenceObjective):
    """SparsePO / MaPO (see the module docstring). Defaults (conf/method/sparsepo.yaml): the official
    config (β = 0.1, `simple_all`, common mask, λ_u = λ_d = 0; its HH setting uses 0.001) and mask
    dropout 0 (the official 0.01 sits in the model, whose dropout `disable_dropout` turns off [unverified])."""

    divergence_slot = TOKEN_KL
    needs_reference_logits = True

    def __init__(self, *, beta: float, mask: str, independent: bool, l1_reward: float, l1_kl: float, dropout: float) -> None:
        super().__init__()
        if mask not in MASKS:
            raise ConfigError(f"objective.mask must be one of {MASKS}, got {mask!r}")
        if beta <= 0 or l1_reward < 0 or l1_kl < 0 or not 0 <= dropout < 1:
            raise ConfigError(f"SparsePO needs objective.beta > 0, l1_reward, l1_kl >= 0, 0 <= dropout < 1; got {beta}, {l1_reward}, {l1_kl}, {dropout}")
        if mask != "learned" and (independent or l1_reward or l1_kl):
            raise ConfigError(f"objective.mask={mask} has no learned mask: objective.independent, l1_reward and l1_kl apply to mask=learned")
        self.beta, self.mask, self.independent, self.dropout = beta, mask, independent, dropout
        common = mask == "learned" and not independent
        self.l1_reward, self.l1_kl = (l1_reward / 2, l1_kl / 2) if common else (l1_reward, l1_kl)
        self.networks = nn.ModuleList()
        self.token_kl = get(TOKEN_KL.name)  # KL(π_ref‖π_θ) per position: the reference in the teacher slot, as TDPO's SeqKL

    @property
    def needs_reference_hidden(self) -> bool:
        return self.mask != "ones"

    def prepare(self, context: PrepareContext) -> None:
        """The learned masks' layers, sized by the policy's config (hidden size, number of layers)."""
        if self.mask != "learned" or len(self.networks):
            return
        config = context.model.config
        eps = getattr(config, "layer_norm_epsilon", None) or getattr(config, "layer_norm_eps", None) or getattr(config, "rms_norm_eps", 1e-5)
        for _ in range(2 if self.independent else 1):
            self.networks.append(MaskNetwork(config.hidden_size, config.num_hidden_layers, self.dropout, eps).to(context.device))

    def masks(self, outputs: dict[str, Any], mask: Tensor) -> tuple[Tensor, Tensor]:
        """`(M^u, M^d)`, each `[2B, T]` (T = L − 1), 0 off the response tokens."""
        if self.mask == "ones":
            ones = mask.float()
            return ones, ones
        hidden = [h[:, :-1] for h in outputs["ref_hidden"]]
        if self.mask == "mapo":
            weights = activation_mask(hidden, mask)
            return weights, weights
        layers = hidden[1:]  # every layer's output, not the embeddings
        reward_mask = self.networks[0](layers) * mask
        kl_mask = self.networks[1](layers) * mask if self.independent else reward_mask
        return reward_mask, kl_mask

    def pairs(self, outputs: dict[str, Any], batch: dict[str, Tensor]) -> Pairs:
        logits, ref_logits, labels = outputs["logits"], outputs["ref_logits"], batch["labels"]
        logps, mask = token_logps(logits, labels)
        ref_logps, _ = token_logps(ref_logits, labels)
        reward_mask, kl_mask = self.masks(outputs, mask)
        token_kl = -self.token_kl(logits[:, :-1], ref_logits[:, :-1], mask=mask, reduction="none")  # −KL(π_ref‖π_θ) per position
        rewards = (reward_mask * (logps - ref_logps)).sum(-1)
        kls = (kl_mask * token_kl * mask).sum(-1)
        (u_w, u_l), (d_w, d_l) = rewards.chunk(2), kls.chunk(2)
        logits_pair = self.beta * ((u_w - u_l) - (d_w - d_l))
        losses = -F.logsigmoid(logits_pair)
        if self.mask == "learned":
            norms_u, norms_d = (reward_mask * mask).abs().sum(-1), (kl_mask * mask).abs().sum(-1)
            losses = losses + self.l1_reward * sum(norms_u.chunk(2)) + self.l1_kl * sum(norms_d.chunk(2))
        implicit = self.beta * (rewards + kls).detach()
        policy = logps.sum(-1).detach()
        return Pairs(losses, *implicit.chunk(2), torch.sigmoid(logits_pair.detach()), *policy.chunk(2))
