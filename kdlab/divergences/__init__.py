"""Divergences between a student q = softmax(z_s / T) and a teacher p = softmax(z_t / T).

Every divergence is a pure function
`fn(student_logits, teacher_logits, *, mask=None, temperature=1.0, reduction="mean", **params)` on
logits `[..., V]` (`[B, C]` per sample, `[B, L, V]` per token), in log space with float32
accumulation, registered by name with `@divergence(name)`. `get(name, **params)` binds one into a
`Divergence` (what objectives call, carrying its name and parameters), which evaluates per-position
ones on large logits with the fused engine (`kdlab.divergences.fused`; `chunked` sets its chunk
size); `sinkhorn` is batch-level.
"""

import importlib
import pkgutil

# Importing the modules registers their divergences, in this order (the order `kdlab list` prints).
from kdlab.divergences.kl import fkl, jeffreys, rkl
from kdlab.divergences.mixture import gjsd, js, skl, srkl
from kdlab.divergences.distances import chi2, cs, hellinger, tvd
from kdlab.divergences.power import ab, alpha
from kdlab.divergences.fdiv import F_FUNCTIONS, fdiv
from kdlab.divergences.sinkhorn import entropic_plan, sinkhorn
from kdlab.divergences.chunked import chunked
from kdlab.divergences.registry import ALIASES, REGISTRY, Divergence, canonical, describe, divergence, get, parameters

# Every other module of the package too: a divergence in a new file registers without a line here.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ALIASES",
    "F_FUNCTIONS",
    "REGISTRY",
    "Divergence",
    "ab",
    "alpha",
    "canonical",
    "chi2",
    "chunked",
    "cs",
    "describe",
    "divergence",
    "entropic_plan",
    "fdiv",
    "fkl",
    "get",
    "gjsd",
    "hellinger",
    "jeffreys",
    "js",
    "parameters",
    "rkl",
    "sinkhorn",
    "skl",
    "srkl",
    "tvd",
]
