"""The divergence registry: each divergence registers itself with `@divergence(name)`; `get` binds it.

Registration is the one place a divergence is declared: the decorator puts the function in
`REGISTRY` (and its aliases in `ALIASES`), `kdlab list divergences` prints it, and `kdlab.conf`
turns its keyword parameters and their defaults into the Hydra option `divergence=<name>`.
"""

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kdlab.divergences import fused
from kdlab.divergences._core import check_inputs, reduce

DivergenceFn = Callable[..., Tensor]

REGISTRY: dict[str, DivergenceFn] = {}  # canonical name -> function
ALIASES: dict[str, str] = {}  # other accepted name -> canonical name
CALL_ARGUMENTS = ("mask", "temperature", "reduction")


def divergence(name: str, *, aliases: tuple[str, ...] = (), batch_level: bool = False) -> Callable[[DivergenceFn], DivergenceFn]:
    """Decorator: register `fn(student_logits, teacher_logits, *, mask, temperature, reduction, **params)`
    as the divergence `name` (also reachable as each of `aliases`). `batch_level=True` marks a
    divergence that couples the positions of a batch (Sinkhorn), which cannot be chunked."""

    def add(fn: DivergenceFn) -> DivergenceFn:
        for key in (name, *aliases):
            if key in REGISTRY or key in ALIASES:
                raise ValueError(f"divergence name {key!r} is registered twice")
        fn.batch_level = batch_level
        REGISTRY[name] = fn
        ALIASES.update({alias: name for alias in aliases})
        return fn

    return add


def canonical(name: str) -> str:
    """The registry name of `name` (an alias such as "kl" gives "fkl"); ValueError for an unknown name."""
    if name in REGISTRY:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"unknown divergence {name!r}; valid names: {', '.join([*REGISTRY, *ALIASES])}")


def parameters(name: str) -> dict[str, Any]:
    """The parameters of a registered divergence (beyond the call arguments) with their defaults."""
    signature = inspect.signature(REGISTRY[canonical(name)])
    return {
        key: p.default for key, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY and key not in CALL_ARGUMENTS
    }


def parameter_types(name: str) -> dict[str, Any]:
    """The annotated types of `parameters(name)` (for typed Hydra configs)."""
    signature = inspect.signature(REGISTRY[canonical(name)])
    return {key: signature.parameters[key].annotation for key in parameters(name)}


@dataclass(frozen=True)
class Divergence:
    """A registered divergence with all its parameters bound: what every objective calls.

    `divergence(student_logits, teacher_logits, *, mask=None, temperature=1.0, reduction="mean")` on
    logits `[..., V]`; `name` is the canonical registry name and `params` every parameter's value
    (defaults filled in), so a run's record says exactly what was computed. A per-position divergence
    is evaluated by the fused engine (`kdlab.divergences.fused`: values, reduction and backward in one
    compiled pass, chunked over positions) on large logits, and by its plain formula `fn` otherwise;
    both give the same values and gradients.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fn(self) -> DivergenceFn:
        return REGISTRY[self.name]

    @property
    def batch_level(self) -> bool:
        return self.fn.batch_level

    def __call__(
        self, student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0, reduction: str = "mean"
    ) -> Tensor:
        return self.evaluate(student_logits, teacher_logits, mask=mask, temperature=temperature, reduction=reduction)

    def evaluate(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        *,
        mask: Tensor | None = None,
        temperature: float = 1.0,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> Tensor:
        """The call, with `chunk_size` positions per chunk of the fused engine (None: its default, and the
        plain formula on small logits); a given `chunk_size` makes the fused engine take every size."""
        if not self.batch_level:
            check_inputs(student_logits, teacher_logits, mask, temperature, reduction)
            per_position = functools.partial(self.fn, temperature=temperature, reduction="none", **self.params)
            key = (self.name, tuple(sorted(self.params.items())), temperature)
            values = fused.per_position_values(per_position, key, student_logits, teacher_logits, chunk_size)
            if values is not None:
                return reduce(values, mask, reduction)
        return self.fn(student_logits, teacher_logits, mask=mask, temperature=temperature, reduction=reduction, **self.params)

    def record(self) -> dict[str, Any]:
        """`{"name": ..., **params}`: the divergence as results.json and W&B record it."""
        return {"name": self.name, **self.params}


def get(name: str, **params: Any) -> Divergence:
    """The divergence `name` with `params` bound, e.g. `get("skl", alpha=0.1)`.

    Raises `ValueError` for an unknown name or parameter, and for a parameter outside its domain: the
    bound divergence is evaluated once on a 1 x 2 probe, so a bad config fails when it is built.
    """
    key = canonical(name)
    valid = parameters(key)
    for param in params:
        if param not in valid:
            raise ValueError(f"unknown parameter {param!r} for divergence {name!r}; its parameters: {', '.join(valid) or 'none'}")
    bound = Divergence(key, {**valid, **params})
    bound(torch.zeros(1, 2), torch.zeros(1, 2))
    return bound


def describe() -> list[tuple[str, str, str]]:
    """(name, "param=default, ...", one-line formula) for every registered divergence; aliases say whose."""
    rows = [
        (name, ", ".join(f"{key}={value!r}" for key, value in parameters(name).items()), inspect.getdoc(fn).splitlines()[0])
        for name, fn in REGISTRY.items()
    ]
    return rows + [(alias, f"alias of {name}", inspect.getdoc(REGISTRY[name]).splitlines()[0]) for alias, name in ALIASES.items()]
