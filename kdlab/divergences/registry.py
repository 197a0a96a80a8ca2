"""The divergence registry: every divergence by name, bound to its parameters by `get`."""

import functools
import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from kdlab.divergences.chunked import chunked
from kdlab.divergences.distances import chi2, cs, hellinger, tvd
from kdlab.divergences.fdiv import fdiv
from kdlab.divergences.kl import fkl, jeffreys, rkl
from kdlab.divergences.mixture import gjsd, js, skl, srkl
from kdlab.divergences.power import ab, alpha
from kdlab.divergences.sinkhorn import sinkhorn

REGISTRY: dict[str, Callable[..., Tensor]] = {
    "fkl": fkl,
    "kl": fkl,
    "rkl": rkl,
    "jeffreys": jeffreys,
    "js": js,
    "gjsd": gjsd,
    "skl": skl,
    "srkl": srkl,
    "tvd": tvd,
    "hellinger": hellinger,
    "chi2": chi2,
    "cs": cs,
    "alpha": alpha,
    "ab": ab,
    "fdiv": fdiv,
    "sinkhorn": sinkhorn,
}

CALL_ARGUMENTS = ("mask", "temperature", "reduction")


def parameters(name: str) -> dict[str, object]:
    """The parameters of a registered divergence (beyond the call arguments) with their defaults."""
    signature = inspect.signature(REGISTRY[name])
    return {
        key: p.default for key, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY and key not in CALL_ARGUMENTS
    }


def get(name: str, chunk_size: int | None = None, **params: object) -> Callable[..., Tensor]:
    """The divergence `name` with `params` bound, e.g. `get("skl", alpha=0.1)`; `chunked` if `chunk_size`.

    Raises `ValueError` for an unknown name or parameter, and for a parameter outside its domain: the
    bound divergence is evaluated once on a 1 x 2 probe, so a bad config fails when it is built.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown divergence {name!r}; valid names: {', '.join(REGISTRY)}")
    valid = parameters(name)
    for key in params:
        if key not in valid:
            raise ValueError(f"unknown parameter {key!r} for divergence {name!r}; its parameters: {', '.join(valid) or 'none'}")
    fn = functools.partial(REGISTRY[name], **params)
    fn(torch.zeros(1, 2), torch.zeros(1, 2))
    return fn if chunk_size is None else chunked(fn, chunk_size)


def describe() -> list[tuple[str, str, str]]:
    """(name, "param=default, ...", one-line formula) for every registered divergence."""
    return [
        (name, ", ".join(f"{key}={value!r}" for key, value in parameters(name).items()), inspect.getdoc(fn).splitlines()[0])
        for name, fn in REGISTRY.items()
    ]
