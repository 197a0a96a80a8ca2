"""Token-level distillation of causal LMs (docs/methods.md §7.0): the loss of lmkd, gkd, distillm and seqkd."""

from typing import Any

import torch
from torch import Tensor

from kdlab.divergences import Divergence, chunked
from kdlab.errors import ConfigError
from kdlab.objectives.base import Objective, OpenSlot
from kdlab.objectives.lm_chunks import fused_token_terms, token_nll
from kdlab.objectives.tail_bin import tail_bin_divergence
from kdlab.tokens import scored


class TokenKD(Objective):
    """`L = (1 - kd_ratio) · CE + kd_ratio · T² · D(p_T ‖ q_T)`, both token means over response tokens.

    With the causal shift, position t of the logits predicts `labels[t+1]`; a token counts when its
    label is not `IGNORE_INDEX` (prompt and padding never count), and every term is
    `Σ_{b,t} m_{b,t} ℓ_{b,t} / Σ_{b,t} m_{b,t}` ("token_mean", DistiLLM/ABKD/TRL-GKD):
    `CE = -log q(y_t | x, y_<t)`, `D` the divergence slot, any registered divergence summed over the
    vocabulary (GKD: gjsd β=0.5; DistiLLM: skl/srkl α=0.1; ABKD: ab); a batch-level one (sinkhorn,
    which couples all response tokens of a batch) only with `chunk_size=None` and `fused=False`. `kd_ratio` r = 1 is pure
    distillation (DistiLLM/ABKD scripts), r = 0 is SFT on the responses (SeqKD on teacher samples);
    the term with weight 0 is still computed, without gradient, and logged.

    Inputs (from `kdlab.modules.LMDistillModule`): `batch["labels"] [B, L]` and either
    - `outputs["logits"], outputs["teacher_logits"] [B, L, V]` (plain), evaluated chunk by chunk
      when `chunk_size` is set (`kdlab.divergences.chunked` for D), or
    - with `fused=True`: `outputs["hidden"] [B, L, H_s]`, `outputs["teacher_hidden"] [B, L, H_t]` and
      the heads `outputs["head"]`, `outputs["teacher_head"]` = (weight `[V, H]`, bias or None); the
      logits are then made chunk by chunk (`chunk_size` positions) and never held in full, or
    - with the teacher's cached top-k outputs (`kdlab.lm_teacher_outputs`, `module.teacher_top_k`):
      `outputs["logits"] [B, L, V]` and, per response token in `labels` order, `outputs["teacher_top_ids"]
      [N, k]`, `outputs["teacher_top_logps"] [N, k]` and `outputs["teacher_tail_logp"] [N]` (log-probabilities
      at `temperature`); D is then taken on the k kept tokens plus one tail bin
      (`kdlab.objectives.tail_bin.tail_bin_divergence`).
    Logs: `ce`, `kd` (the divergence before T² and weighting), `tokens` (response tokens in the batch).
    """

    divergence_slot = OpenSlot()

    def __init__(self, divergence: Divergence, *, kd_ratio: float, temperature: float, chunk_size: int | None, fused: bool) -> None:
        super().__init__()
        if not 0.0 <= kd_ratio <= 1.0:
            raise ConfigError(f"objective.kd_ratio must be in [0, 1], got {kd_ratio}")
        if temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {temperature}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"objective.chunk_size must be >= 1 or null, got {chunk_size}")
        self.divergence = self.divergence_slot.bind("TokenKD", divergence)
        if self.divergence.batch_level and (fused or chunk_size is not None):
            raise ConfigError(f"divergence={self.divergence.name} couples all positions of a batch: "
                              "it needs objective.fused=false and objective.chunk_size=null")
        self.kd_ratio, self.temperature, self.chunk_size, self.fused = kd_ratio, temperature, chunk_size, fused
        self.chunked_divergence = chunked(self.divergence, chunk_size) if chunk_size is not None else self.divergence

    def forward(self, outputs: dict[str, Any], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        labels = batch["labels"][:, 1:]  # the causal shift: position t of the logits predicts labels[t+1]
        mask = scored(labels)
        targets = labels[mask]
        if self.fused:  # one pass makes both terms from the same chunk logits
            divergence, nll = fused_token_terms(
                self.divergence, outputs["hidden"][:, :-1][mask], outputs["head"], outputs["teacher_hidden"][:, :-1][mask],
                outputs["teacher_head"], targets, self.chunk_size, self.temperature,
            )
        else:
            grad = torch.is_grad_enabled()
            student = outputs["logits"][:, :-1][mask]
            with torch.set_grad_enabled(grad and self.kd_ratio > 0):
                divergence = self.token_divergence(student, outputs, mask)
            with torch.set_grad_enabled(grad and self.kd_ratio < 1):
                nll = token_nll(student, targets, self.chunk_size)
        tokens = mask.sum()
        kd = divergence.sum() / tokens.clamp_min(1)
        ce = nll.sum() / tokens.clamp_min(1)
        loss = self.kd_ratio * self.temperature**2 * kd + (1 - self.kd_ratio) * ce
        return loss, {"ce": ce.detach(), "kd": kd.detach(), "tokens": tokens.detach().float()}

    def token_divergence(self, student: Tensor, outputs: dict[str, Any], mask: Tensor) -> Tensor:
        """`D(p_T ‖ q_T)` per response token `[N]`: on the full vocabulary, or on the cached top-k plus a tail bin."""
        if "teacher_top_ids" in outputs:
            return tail_bin_divergence(self.divergence, student, outputs["teacher_top_ids"], outputs["teacher_top_logps"],
                                       outputs["teacher_tail_logp"], self.temperature, self.chunk_size)
        return self.chunked_divergence(student, outputs["teacher_logits"][:, :-1][mask], temperature=self.temperature, reduction="none")
