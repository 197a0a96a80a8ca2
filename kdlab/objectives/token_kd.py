"""Token-level distillation of causal LMs (METHODS §7.0): the loss of lmkd, gkd, distillm and seqkd."""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.divergences import chunked, get
from kdlab.objectives.lm_chunks import fused_token_terms, token_nll

IGNORE_INDEX = -100


class TokenKD(nn.Module):
    """`L = (1 - kd_ratio) · CE + kd_ratio · T² · D(p_T ‖ q_T)`, both token means over response tokens.

    With the causal shift, position t of the logits predicts `labels[t+1]`; a token counts when its
    label is not -100 (prompt and padding never count), and every term is
    `Σ_{b,t} m_{b,t} ℓ_{b,t} / Σ_{b,t} m_{b,t}` ("token_mean", DistiLLM/ABKD/TRL-GKD):
    `CE = -log q(y_t | x, y_<t)`, `D` any per-position divergence of `kdlab.divergences` summed over
    the vocabulary (GKD: gjsd β=0.5; DistiLLM: skl/srkl α=0.1; ABKD: ab). `kd_ratio` r = 1 is pure
    distillation (DistiLLM/ABKD scripts), r = 0 is SFT on the responses (SeqKD on teacher samples);
    the term with weight 0 is still computed, without gradient, and logged.

    Inputs (from `kdlab.modules.LMDistillModule`): `batch["labels"] [B, L]` and either
    - `outputs["logits"], outputs["teacher_logits"] [B, L, V]` (plain), evaluated chunk by chunk
      when `chunk_size` is set (`kdlab.divergences.chunked` for D), or
    - with `fused=True`: `outputs["hidden"] [B, L, H_s]`, `outputs["teacher_hidden"] [B, L, H_t]` and
      the heads `outputs["head"]`, `outputs["teacher_head"]` = (weight `[V, H]`, bias or None); the
      logits are then made chunk by chunk (`chunk_size` positions) and never held in full.
    Logs: `ce`, `kd` (the divergence before T² and weighting), `tokens` (response tokens in the batch).
    """

    def __init__(
        self,
        divergence: Callable[..., Tensor] | None = None,
        kd_ratio: float = 1.0,
        temperature: float = 1.0,
        chunk_size: int | None = None,
        fused: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= kd_ratio <= 1.0:
            raise ValueError(f"kd_ratio must be in [0, 1], got {kd_ratio}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or null, got {chunk_size}")
        self.divergence = divergence if divergence is not None else get("fkl")
        base = getattr(self.divergence, "func", self.divergence)
        if getattr(base, "batch_level", False) and (fused or chunk_size is not None):
            raise ValueError(f"{getattr(base, '__name__', base)} couples all positions of a batch: it needs fused=false and chunk_size=null")
        self.kd_ratio, self.temperature, self.chunk_size, self.fused = kd_ratio, temperature, chunk_size, fused
        self.chunked_divergence = chunked(self.divergence, chunk_size) if chunk_size is not None else self.divergence

    def forward(self, outputs: dict[str, Any], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        targets = labels[mask]
        if self.fused:  # one pass makes both terms from the same chunk logits
            divergence, nll = fused_token_terms(
                self.divergence, outputs["hidden"][:, :-1][mask], outputs["head"], outputs["teacher_hidden"][:, :-1][mask],
                outputs["teacher_head"], targets, self.chunk_size, self.temperature,
            )
        else:
            grad = torch.is_grad_enabled()
            student, teacher = outputs["logits"][:, :-1][mask], outputs["teacher_logits"][:, :-1][mask]
            with torch.set_grad_enabled(grad and self.kd_ratio > 0):
                divergence = self.chunked_divergence(student, teacher, temperature=self.temperature, reduction="none")
            with torch.set_grad_enabled(grad and self.kd_ratio < 1):
                nll = token_nll(student, targets, self.chunk_size)
        tokens = mask.sum()
        kd = divergence.sum() / tokens.clamp_min(1)
        ce = nll.sum() / tokens.clamp_min(1)
        loss = self.kd_ratio * self.temperature**2 * kd + (1 - self.kd_ratio) * ce
        return loss, {"ce": ce.detach(), "kd": kd.detach(), "tokens": tokens.detach().float()}
