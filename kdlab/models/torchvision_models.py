"""torchvision's ImageNet classifiers by name, as kdlab vision models: `create("tv_resnet50", ...)`.

`weights=None` (the default) builds a randomly initialised model with a `num_classes`-way head;
`weights="DEFAULT"` (or a torchvision weight name such as "IMAGENET1K_V2") downloads the
pretrained weights through torchvision and, when `num_classes` differs from the weights' classes,
replaces the classification head with a fresh `num_classes`-way linear layer. Other arguments go to
the torchvision builder (`create("tv_vit_b_16", num_classes=100, image_size=32)`).

`tv_vit` is torchvision's `VisionTransformer` at any size (`image_size`, `patch_size`, `num_layers`,
`num_heads`, `hidden_dim`, `mlp_dim`, `in_channels`): small ViTs for CIFAR or the digits, the
heterogeneous students and teachers of OFA-KD.
"""

import math
from functools import partial

import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from kdlab.models.registry import register

# Left out: no linear head (SqueezeNet) or auxiliary outputs in training mode (GoogLeNet, Inception v3).
EXCLUDED = {"squeezenet1_0", "squeezenet1_1", "googlenet", "inception_v3"}
PREFIX = "tv_"


class TorchvisionClassifier(nn.Module):
    """A torchvision classifier with kdlab's interface.

    Shapes: input `[B, 3, H, W]` -> logits `[B, num_classes]`. `forward(x, return_features=True)`
    returns `(logits, {"penultimate": [B, feature_dim], "stages": [...]})`: the penultimate feature
    is the input of the final linear layer (captured by a forward pre-hook); the stages are the
    outputs of `layer1..layer4` for the ResNet family (ResNet, ResNeXt, Wide ResNet), of the four
    trunk blocks for RegNets and of four encoder blocks for vision transformers (`vit_stage_blocks`;
    tokens `[B, 1 + patches, D]`, the class token first: `num_prefix_tokens` = 1), and an empty list
    for other architectures.
    """

    def __init__(self, name: str, num_classes: int, weights: str | None = None, **builder_kwargs) -> None:
        super().__init__()
        if name in BUILDERS:
            self.net = BUILDERS[name](num_classes=num_classes, **builder_kwargs)
        elif weights is None:
            self.net = torchvision.models.get_model(name, num_classes=num_classes, **builder_kwargs)
        else:
            self.net = torchvision.models.get_model(name, weights=weights, **builder_kwargs)
        head_name, head = _final_linear(self.net)
        if head.out_features != num_classes:
            parent, _, attribute = head_name.rpartition(".")
            head = nn.Linear(head.in_features, num_classes)
            setattr(self.net.get_submodule(parent), attribute, head)
        self.num_classes = num_classes
        self.feature_dim = head.in_features
        self.num_prefix_tokens = 1 if isinstance(self.net, VisionTransformer) else 0
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


def vision_transformer(
    num_classes: int, image_size: int, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int, in_channels: int = 3
) -> VisionTransformer:
    """torchvision's `VisionTransformer` of the given size; `in_channels` other than 3 replaces its patch
    embedding by a `Conv2d(in_channels, hidden_dim, patch_size, stride=patch_size)` initialised as torchvision does."""
    net = VisionTransformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes=num_classes)
    if in_channels != 3:
        net.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / (in_channels * patch_size**2)))
        nn.init.zeros_(net.conv_proj.bias)
    return net


BUILDERS = {"vit": vision_transformer}  # kdlab's builders beside torchvision's, registered as tv_<name>


def vit_stage_blocks(num_layers: int) -> list[int]:
    """The encoder blocks whose outputs are a ViT's four stages (0-based). OFA-KD takes blocks 2, 4, 10
    and 12 of 12 (indices 1, 3, 9, 11); other depths keep those proportions, one block apart at least;
    fewer than four blocks give one stage each."""
    if num_layers < 4:
        return list(range(num_layers))
    ends = [round(num_layers * share / 12) for share in (2, 4, 10)] + [num_layers]
    for i in range(1, 4):
        ends[i] = max(ends[i], ends[i - 1] + 1)
    for i in range(2, -1, -1):  # and no later than the next block leaves room for
        ends[i] = min(ends[i], ends[i + 1] - 1)
    return [max(end, 1) - 1 for end in ends]


def _stage_modules(net: nn.Module) -> list[nn.Module]:
    if isinstance(net, VisionTransformer):
        return [net.encoder.layers[i] for i in vit_stage_blocks(len(net.encoder.layers))]
    if all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        return [getattr(net, f"layer{i}") for i in range(1, 5)]
    if hasattr(net, "trunk_output"):
        return list(net.trunk_output.children())
    return []


def _register_all() -> None:
    for name in [*torchvision.models.list_models(module=torchvision.models), *BUILDERS]:
        if name not in EXCLUDED:
            register(PREFIX + name)(partial(TorchvisionClassifier, name))


_register_all()
