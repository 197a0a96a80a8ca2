"""The f-divergence generators of kdlab's divergences, for the estimators that work from samples
(f-DPG's policy gradient, DPH-RL's rehearsal).

In kdlab's orientation a divergence compares a student/policy `q` (first argument) with a
teacher/target `p` (second). Each divergence below is an f-divergence of `q` from `p`:

    D(q, p) = Σ_x p(x) g(q(x)/p(x)) = E_{x~p}[ g(t) ],   t = q/p,

so that (docs/methods.md §1.8, §8.7, §8.9)
- from samples of `p`, `g(t)` is an unbiased estimate of D (DPH-RL's rehearsal on samples of π₀);
- the gradient in the parameters of q is `∇ D = E_{x~q}[ g'(t) ∇ log q(x) ]` (f-DPG, with p the target).

`g` is normalised so that `g(1) = 0` and `g'(1) = 0` (a multiple of `t − 1` has zero mean under p
and changes neither value nor gradient), which makes each sample's estimate ≥ 0 — the "low-variance"
forms of the DPH-RL code (k3 for the forward KL). Both functions take `log t` (never t, against
overflow); `log t` is clamped to ± `MAX_LOG_RATIO` as kdlab's `fdiv` does.

| name | D(q, p) | g(t) | g'(t) |
|---|---|---|---|
| fkl | KL(p‖q) | t − 1 − log t (k3) | 1 − 1/t |
| rkl | KL(q‖p) | t log t − t + 1 | log t |
| js | JS(p, q) | ½[t log t − (t+1) log((t+1)/2)] | ½ log(2t/(1+t)) |
| tvd | ½ Σ|p − q| | ½ |t − 1| | ½ sign(t − 1) |
| chi2 | χ²(p‖q) = Σ (p−q)²/q | (t − 1)²/t | 1 − 1/t² |
| hellinger | 1 − Σ √(pq) | ½ (√t − 1)² | ½ (1 − 1/√t) |
| jeffreys | KL(p‖q) + KL(q‖p) | (t − 1) log t | log t + 1 − 1/t |
| alpha (a) | (1 − Σ p^a q^(1−a))/(a(1−a)) | (t^(1−a) − (1−a) t − a)/(a(a − 1)) | (1 − t^(−a))/a |

(`alpha` at a = 1 is fkl and at a = 0 is rkl, taken as those limits, as the registry does; its g is
DPH-RL's α-divergence generator with the same a.) `g'` is written with the normalisation's constant
removed (`g'(1) = 0`); a constant in `g'` is absorbed by f-DPG's baseline.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.divergences.fdiv import MAX_LOG_RATIO

LOG2 = math.log(2.0)


def _alpha(a: float) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    if a == 1:
        return GENERATORS["fkl"]
    if a == 0:
        return GENERATORS["rkl"]
    return (lambda s: (torch.exp((1 - a) * s) - (1 - a) * s.exp() - a) / (a * (a - 1)),
            lambda s: -torch.expm1(-a * s) / a)


# name -> (g(log t), g'(log t)), each normalised as the module docstring says.
GENERATORS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "fkl": (lambda s: torch.expm1(s) - s, lambda s: -torch.expm1(-s)),
    "rkl": (lambda s: s.exp() * s - torch.expm1(s), lambda s: s),
    "js": (lambda s: 0.5 * (s.exp() * s - (s.exp() + 1) * (F.softplus(s) - LOG2)), lambda s: 0.5 * (LOG2 - F.softplus(-s))),
    "tvd": (lambda s: 0.5 * torch.expm1(s).abs(), lambda s: 0.5 * torch.sign(s)),
    "chi2": (lambda s: torch.expm1(s).square() * (-s).exp(), lambda s: -torch.expm1(-2 * s)),
    "hellinger": (lambda s: 0.5 * torch.expm1(s / 2).square(), lambda s: -0.5 * torch.expm1(-s / 2)),
    "jeffreys": (lambda s: torch.expm1(s) * s, lambda s: s - torch.expm1(-s)),
}
NAMES = (*GENERATORS, "alpha")


def generator(name: str, params: Mapping[str, Any]) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """`(g, g')` of the registered divergence `name` with its parameters (see the module docstring)."""
    if name == "alpha":
        return _alpha(float(params["alpha"]))
    if name not in GENERATORS:
        raise ValueError(f"no sample estimator for divergence {name!r}; estimators exist for {', '.join(NAMES)}")
    return GENERATORS[name]


def clamp_log_ratio(log_ratio: Tensor) -> Tensor:
    """`log t` clamped to ± MAX_LOG_RATIO (values change only where t or 1/t exceeds e^30)."""
    return log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
