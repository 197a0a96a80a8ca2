"""The shape every CIFAR model of the zoo shares: stem -> stages -> neck -> linear head."""

import torch
from torch import nn


class StagedClassifier(nn.Module):
    """A convolutional classifier built from a stem, a list of stages, a neck and a linear head.

    Shapes: input `[B, in_channels, H, W]` -> logits `[B, num_classes]`.
    `forward(x, return_features=True)` returns `(logits, features)` with
    `features["penultimate"]`: the neck's output, the vector the head reads, `[B, feature_dim]`;
    `features["stages"]`: the output map of each stage, `[B, C_k, H_k, W_k]`, shallow to deep.
    Families build the parts and pass them here; `num_classes` and `feature_dim` are attributes.
    `input_size` is the image size the architectures are designed for (CIFAR's 32x32): their strides
    reduce smaller images to a few pixels, and `kdlab.checks` refuses data of another size.
    """

    input_size: tuple[int, int] = (32, 32)

    def __init__(
        self, stem: nn.Module, stages: list[nn.Module], neck: nn.Module, feature_dim: int, num_classes: int
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.neck = neck
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        x = self.stem(x)
        stages = []
        for stage in self.stages:
            x = stage(x)
            stages.append(x)
        penultimate = self.neck(x)
        logits = self.head(penultimate)
        return (logits, {"penultimate": penultimate, "stages": stages}) if return_features else logits


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Convolution without bias ("same" padding), batch norm, and optionally ReLU."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def global_pool() -> nn.Sequential:
    """Global average pooling to `[B, C]`."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def init_normal_fan_out(model: nn.Module, linear_std: float | None = None) -> None:
    """The initialisation of the WRN/VGG/MobileNetV2 reference code: conv weights ~ N(0, 2/(k*k*out)),
    conv biases 0, BN (1, 0), linear bias 0 and, if `linear_std` is given, linear weights ~ N(0, std^2)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)
