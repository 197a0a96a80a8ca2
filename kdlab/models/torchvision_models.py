"""torchvision's ImageNet classifiers by name, as kdlab vision models: `create("tv_resnet50", ...)`.

`weights=None` (the default) builds a randomly initialised model with a `num_classes`-way head;
`weights="DEFAULT"` (or a torchvision weight name such as "IMAGENET1K_V2") downloads the
pretrained weights through torchvision and, when `num_classes` differs from the weights' classes,
replaces the classification head with a fresh `num_classes`-way linear layer.
"""

from functools import partial

import torch
import torchvision
from torch import nn

from kdlab.models.registry import register

# Left out: no linear head (SqueezeNet) or auxiliary outputs in training mode (GoogLeNet, Inception v3).
EXCLUDED = {"squeezenet1_0", "squeezenet1_1", "googlenet", "inception_v3"}
PREFIX = "tv_"


class TorchvisionClassifier(nn.Module):
    """A torchvision classifier with kdlab's interface.

    Shapes: input `[B, 3, H, W]` -> logits `[B, num_classes]`. `forward(x, return_features=True)`
    returns `(logits, {"penultimate": [B, feature_dim], "stages": [...]})`: the penultimate feature
    is the input of the final linear layer (captured by a forward pre-hook); the stages are the
    outputs of `layer1..layer4` for the ResNet family (ResNet, ResNeXt, Wide ResNet) and of the four
    trunk blocks for RegNets, and an empty list for other architectures.
    """

    def __init__(self, name: str, num_classes: int, weights: str | None = None) -> None:
        super().__init__()
        if weights is None:
            self.net = torchvision.models.get_model(name, num_classes=num_classes)
        else:
            self.net = torchvision.models.get_model(name, weights=weights)
        head_name, head = _final_linear(self.net)
        if head.out_features != num_classes:
            parent, _, attribute = head_name.rpartition(".")
            head = nn.Linear(head.in_features, num_classes)
            setattr(self.net.get_submodule(parent), attribute, head)
        self.num_classes = num_classes
        self.feature_dim = head.in_features
        self._captured: dict[str, torch.Tensor] = {}
        head.register_forward_pre_hook(lambda _, args: self._captured.__setitem__("penultimate", args[0]))
        self._stage_modules = _stage_modules(self.net)
        for index, module in enumerate(self._stage_modules):
            module.register_forward_hook(lambda _, __, out, i=index: self._captured.__setitem__(f"stage{i}", out))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        self._captured.clear()
        logits = self.net(x)
        if not return_features:
            return logits
        stages = [self._captured.pop(f"stage{i}") for i in range(len(self._stage_modules))]
        features = {"penultimate": self._captured.pop("penultimate").flatten(1), "stages": stages}
        return logits, features


def _final_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(name, module) for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no linear classification head")
    return linears[-1]


def _stage_modules(net: nn.Module) -> list[nn.Module]:
    if all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        return [getattr(net, f"layer{i}") for i in range(1, 5)]
    if hasattr(net, "trunk_output"):
        return list(net.trunk_output.children())
    return []


def _register_all() -> None:
    for name in torchvision.models.list_models(module=torchvision.models):
        if name not in EXCLUDED:
            register(PREFIX + name)(partial(TorchvisionClassifier, name))


_register_all()
