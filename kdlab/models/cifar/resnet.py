"""CIFAR ResNets of the KD literature (RepDistiller / mdistiller definitions).

- `resnet{8,14,20,32,44,56,110}`: He et al.'s CIFAR ResNet, 3 stages of (depth-2)/6 basic blocks,
  widths 16/32/64 after a 16-channel stem; `resnet8x4` and `resnet32x4`: 4x wider (stem 32,
  widths 64/128/256).
- `resnet18`, `resnet34`, `resnet50`: the ImageNet ResNets adapted to 32x32 inputs as in
  RepDistiller (`resnetv2.py`): 3x3 stride-1 stem of 64 channels, no max-pool, 4 stages
  (64/128/256/512 x expansion). `resnet50` is the teacher of the ResNet50 -> MobileNetV2 pair.
Stage outputs are the post-ReLU outputs of each stage; the penultimate feature is the global
average pool of the last stage.
"""

from functools import partial

import torch
from torch import nn

from kdlab.models.cifar.staged import StagedClassifier, conv_bn, global_pool, init_normal_fan_out
from kdlab.models.registry import register


class BasicBlock(nn.Module):
    """relu(BN(conv3x3(relu(BN(conv3x3(x))))) + shortcut(x)); shortcut = 1x1 conv + BN when shapes change."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            conv_bn(in_channels, channels, 3, stride), conv_bn(channels, channels, 3, relu=False)
        )
        self.shortcut = _shortcut(in_channels, channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4x `channels`, each with BN; residual sum, ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_channels, channels, 1),
            conv_bn(channels, channels, 3, stride),
            conv_bn(channels, out_channels, 1, relu=False),
        )
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return conv_bn(in_channels, out_channels, 1, stride, relu=False)


class CifarResNet(StagedClassifier):
    """A ResNet for 32x32 inputs: 3x3 stem, then one stage per entry of `widths` (the first at
    stride 1, the others at stride 2) of `blocks[k]` residual blocks; global pooling; linear head.
    `feature_dim = widths[-1] * block.expansion`."""

    def __init__(
        self,
        num_classes: int,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: tuple[int, ...],
        widths: tuple[int, ...],
        stem_width: int,
        in_channels: int = 3,
    ) -> None:
        stages, channels = [], stem_width
        for k, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            layers = []
            for i in range(count):
                layers.append(block(channels, width, stride=2 if k > 0 and i == 0 else 1))
                channels = width * block.expansion
            stages.append(nn.Sequential(*layers))
        super().__init__(conv_bn(in_channels, stem_width, 3), stages, global_pool(), channels, num_classes)
        init_normal_fan_out(self)


def he_resnet(num_classes: int, depth: int, channels: tuple[int, int, int, int] = (16, 16, 32, 64),
              in_channels: int = 3) -> CifarResNet:
    """He et al.'s CIFAR ResNet-`depth` (depth = 6n+2): a stem of `channels[0]` channels, then 3
    stages of n basic blocks with `channels[1:]` channels (the `x4` models: 32/64/128/256)."""
    if (depth - 2) % 6 != 0:
        raise ValueError(f"a CIFAR ResNet has depth 6n+2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    return CifarResNet(
        num_classes, BasicBlock, (n, n, n), channels[1:], stem_width=channels[0], in_channels=in_channels
    )


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register(f"resnet{_depth}")(partial(he_resnet, depth=_depth))
for _depth in (8, 32):
    register(f"resnet{_depth}x4")(partial(he_resnet, depth=_depth, channels=(32, 64, 128, 256)))

_IMAGENET_STYLE = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
                   "resnet50": (Bottleneck, (3, 4, 6, 3))}
for _name, (_block, _blocks) in _IMAGENET_STYLE.items():
    register(_name)(partial(CifarResNet, block=_block, blocks=_blocks, widths=(64, 128, 256, 512), stem_width=64))
