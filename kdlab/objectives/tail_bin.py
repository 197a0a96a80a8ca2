"""Divergences on a teacher's top-k tokens plus one tail bin: token KD from cached top-k teacher outputs.

Per position, with `p = softmax(z_t / T)` (teacher), `q = softmax(z_s / T)` (student) over V tokens and
S the teacher's k most probable tokens (the same set at every T: softmax is monotone), both are
coarsened to k + 1 bins, the kept tokens and everything else:

    p̄ = (p_S, p_tail),  p_tail = 1 - Σ_{v∈S} p_v
    q̄ = (q_S, q_tail),  q_tail = 1 - Σ_{v∈S} q_v

and the loss is the registered divergence `D(p̄ ‖ q̄)` over k + 1 "classes", called on their
log-probabilities at temperature 1 (log-probabilities are valid logits: log_softmax leaves them as they
are). Tail log-masses are taken without cancellation, `log m_tail = logsumexp_{v∉S} z/T - logsumexp_v z/T`
(never `log(1 - Σ)`, which loses every digit when the kept mass is close to 1); with k = V the tail is
empty and holds `finfo.min` (probability 0, finite so that gradients stay finite), and `D(p̄ ‖ q̄)` is
the full-vocabulary divergence. The value is exact for the coarsened pair; for an f-divergence (fkl,
rkl, jeffreys, js, gjsd, skl, srkl, tvd, hellinger, chi2, alpha, fdiv) it is a lower bound of the
full-vocabulary one by the data-processing inequality (merging tokens never increases an
f-divergence); cs and ab are not f-divergences and have no such bound. The gap is measured in
benchmarks/README.md ("LM teacher-output cache").

Shapes: logits `[N, V]`, top-k ids `[N, k]` (any integer dtype), teacher top-k log-probabilities
`[N, k]` and tail log-mass `[N]`; per-position results `[N]`.
"""

import torch
from torch import Tensor

from kdlab.divergences import Divergence
from kdlab.objectives.lm_chunks import chunk_map
from kdlab.tokens import at_least_fp32


def tail_log_mass(log_probs: Tensor, ids: Tensor) -> Tensor:
    """`log(1 - Σ_{v∈S} exp(log_probs_v))` per row, `[N, V], [N, k] -> [N]`, as the log-sum-exp of
    the complement of S (`finfo.min` when S is the whole vocabulary)."""
    complement = log_probs.scatter(-1, ids.long(), torch.finfo(log_probs.dtype).min)
    return complement.logsumexp(-1)


def top_k_log_probs(teacher_logits: Tensor, k: int, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's coarsened distribution `[N, V] -> (ids [N, k] int32, log p_S [N, k], log p_tail [N])`
    at `temperature`, in at least fp32 (see the module docstring); ids in decreasing probability."""
    log_probs = (at_least_fp32(teacher_logits) / temperature).log_softmax(-1)
    values, ids = log_probs.topk(k, dim=-1)
    return ids.int(), values, tail_log_mass(log_probs, ids)


def coarsened_log_probs(logits: Tensor, ids: Tensor, temperature: float) -> Tensor:
    """The student's `log q̄ = (log q_S, log q_tail)`, `[N, V], [N, k] -> [N, k + 1]`, at `temperature`."""
    log_probs = (at_least_fp32(logits) / temperature).log_softmax(-1)
    return torch.cat([log_probs.gather(-1, ids.long()), tail_log_mass(log_probs, ids).unsqueeze(-1)], dim=-1)


def tail_bin_divergence(
    divergence: Divergence,
    student_logits: Tensor,
    ids: Tensor,
    teacher_log_probs: Tensor,
    teacher_tail: Tensor,
    temperature: float,
    chunk_size: int | None = None,
) -> Tensor:
    """`D(p̄ ‖ q̄)` per position `[N]` from student logits `[N, V]` and the teacher's cached top-k
    (`ids [N, k]`, `teacher_log_probs [N, k]`, `teacher_tail [N]`, at `temperature`), chunk by chunk
    over positions (`kdlab.objectives.lm_chunks.chunk_map`). Gradients reach the student logits only."""

    def per_chunk(z: Tensor, s: Tensor, logp: Tensor, tail: Tensor) -> Tensor:
        teacher = torch.cat([logp, tail.unsqueeze(-1)], dim=-1).to(torch.promote_types(z.dtype, torch.float32))
        return divergence(coarsened_log_probs(z, s, temperature), teacher, temperature=1.0, reduction="none")

    return chunk_map(per_chunk, chunk_size, student_logits, ids, teacher_log_probs.detach(), teacher_tail.detach())
