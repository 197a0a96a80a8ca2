"""Models by name, timm-style: `create("resnet32x4", num_classes=100)`.

Each family registers its constructors with `@register(name)`; a config names a model with
`{_target_: kdlab.models.create, name: resnet8x4, num_classes: ...}`.
"""

from collections.abc import Callable
from difflib import get_close_matches

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make the constructor available as `create(name, ...)`."""

    def add(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        MODELS[name] = constructor
        return constructor

    return add


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the model registered as `name` with a `num_classes`-way head (other arguments go to
    its constructor, e.g. `in_channels`, or `weights` for torchvision models)."""
    if name not in MODELS:
        close = get_close_matches(name, MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: kdlab.models.MODELS ({len(MODELS)} names).")
    return MODELS[name](num_classes=num_classes, **kwargs)
