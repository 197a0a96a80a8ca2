"""Batch-level entropic optimal transport between the student and teacher distributions of a batch (SinKD)."""

import math
from collections.abc import Callable

import torch
from torch import Tensor

from kdlab.divergences._core import check_param, log_probs, reduce
from kdlab.divergences.registry import divergence

COSTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l1": lambda x, y: torch.cdist(x, y, p=1),
    "l2": lambda x, y: torch.cdist(x, y, p=2, compute_mode="donot_use_mm_for_euclid_dist"),
    "sq_l2": lambda x, y: torch.cdist(x, y, p=2, compute_mode="donot_use_mm_for_euclid_dist").square(),
}
DOMAINS = ("log", "plain")
VARIANTS = ("cuturi_primal", "entropic", "debiased")


def entropic_plan(cost: Tensor, epsilon: float, n_iters: int, domain: str = "log") -> Tensor:
    """Log of the entropic OT plan between uniform marginals 1/n, 1/m for a cost `[n, m]`.

    `n_iters` Sinkhorn iterations from g = 0, each a row then a column update (as SinKD's
    row-then-column normalisation; the columns are exact on return):
    log domain  f_i = -log n - LSE_j(g_j - C_ij / eps),  g_j = -log m - LSE_i(f_i - C_ij / eps);
    plain domain u = a / (K v),  v = b / (K^T u),  K = exp(-C / eps)  (underflows for C / eps >~ 80).
    Returns log P_ij = f_i + g_j - C_ij / eps (scaled potentials), differentiable through the iterations.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    n, m = cost.shape
    log_kernel = -cost / epsilon
    if domain == "log":
        g = cost.new_zeros(m)
        for _ in range(n_iters):
            f = -math.log(n) - torch.logsumexp(log_kernel + g, dim=1)
            g = -math.log(m) - torch.logsumexp(log_kernel + f[:, None], dim=0)
    else:
        kernel, v = log_kernel.exp(), cost.new_ones(m)
        for _ in range(n_iters):
            u = 1 / (n * (kernel @ v))
            v = 1 / (m * (kernel.T @ u))
        f, g = u.log(), v.log()
    return f[:, None] + log_kernel + g


@divergence("sinkhorn", batch_level=True)
def sinkhorn(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    epsilon: float = 0.1,
    n_iters: int = 20,
    cost: str = "l1",
    domain: str = "log",
    variant: str = "cuturi_primal",
    detach_plan: bool = False,
) -> Tensor:
    """W_eps(q, p) = sum_ij P_ij C_ij,  C_ij = ||q_i - p_j||,  P = entropic OT plan with marginals 1/N

    BATCH-LEVEL (SinKD, Cui et al. 2024): the N counted positions of the batch (rows of `[..., V]`
    where `mask` is True, e.g. N = B for `[B, C]`) give N student distributions q_i and N teacher
    distributions p_j, two point clouds on the simplex; one entropic OT problem is solved between them
    (`cost` "l1" as SinKD, "l2" or "sq_l2"; `epsilon`; `n_iters` Sinkhorn iterations in the `domain`
    "log" or "plain"). SinKD's softmax temperature tau (2 in its code) is `temperature`. The value
    of a position depends on the whole batch.
    - `variant`: "cuturi_primal" <P, C> (SinKD); "entropic" OT_eps = <P, C> + eps KL(P || a b^T);
      "debiased" S_eps = OT_eps(q, p) - OT_eps(q, q) / 2 - OT_eps(p, p) / 2 (zero when q = p).
    - `detach_plan=False` (SinKD's code) differentiates through the unrolled iterations; True treats
      P as a constant (the envelope-theorem gradient, dW/dC = P, at convergence).
    - `reduction`: "none" gives each counted position i the cost of transporting its own unit of mass,
      N sum_j P_ij C_ij (0 at masked positions, leading shape); "mean" = <P, C> (the distance, as
      SinKD's paper with marginals 1/B); "sum" = N <P, C> (SinKD's code value: a plan with unit row
      and column sums, total mass B).
    With eps > 0 the plan is not diagonal, so cuturi_primal and entropic are > 0 even for identical
    inputs (-> 0 as eps -> 0 for cuturi_primal). Not chunkable (every position couples to every other).
    """
    check_param("epsilon", epsilon, low=1e-12)
    if isinstance(n_iters, bool) or not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"n_iters must be an int >= 1, got {n_iters!r}")
    for name, value, valid in (("cost", cost, tuple(COSTS)), ("domain", domain, DOMAINS), ("variant", variant, VARIANTS)):
        if value not in valid:
            raise ValueError(f"{name} must be one of {valid}, got {value!r}")
    if not isinstance(detach_plan, bool):
        raise ValueError(f"detach_plan must be a bool, got {detach_plan!r}")
    log_q, log_p = log_probs(student_logits, teacher_logits, mask, temperature, reduction)
    counted = mask if mask is not None else torch.ones(log_q.shape[:-1], dtype=torch.bool, device=log_q.device)
    q, p = log_q[counted].exp(), log_p[counted].exp()
    transport = dict(epsilon=epsilon, n_iters=n_iters, cost=cost, domain=domain, detach_plan=detach_plan)
    if q.shape[0] == 0:
        rows = q.sum(dim=-1)
    elif variant == "debiased":
        rows = _rows(q, p, entropic=True, **transport)
        rows = rows - 0.5 * (_rows(q, q, entropic=True, **transport) + _rows(p, p, entropic=True, **transport))
    else:
        rows = _rows(q, p, entropic=variant == "entropic", **transport)
    values = log_q.new_zeros(counted.shape).masked_scatter(counted, rows)
    return reduce(values, mask, reduction)



def _rows(x: Tensor, y: Tensor, *, entropic: bool, epsilon: float, n_iters: int, cost: str, domain: str, detach_plan: bool) -> Tensor:
    """Per-row transport cost from x `[n, V]` to y `[m, V]` per unit of row mass: n sum_j P_ij c_ij."""
    c = COSTS[cost](x, y)
    log_plan = entropic_plan(c.detach() if detach_plan else c, epsilon, n_iters, domain)
    if detach_plan:
        log_plan = log_plan.detach()
    n, m = c.shape
    per_pair = c + epsilon * (log_plan + math.log(n * m)) if entropic else c
    return n * (log_plan.exp() * per_pair).sum(dim=1)
