"""ShuffleNetV1 (g=3) and ShuffleNetV2 (1x) for CIFAR, as used by RepDistiller / mdistiller.

Both start with a 1x1 conv to 24 channels (BN, ReLU) at full resolution and have 3 stages that
each halve the resolution (32 -> 16 -> 8 -> 4). Stage outputs are the outputs of the stages;
the penultimate feature is the global average pool (V2: after a 1x1 conv to 1024 channels).
"""

import torch
from torch import nn

from kdlab.models.cifar.staged import StagedClassifier, conv_bn, global_pool
from kdlab.models.registry import register


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, g*c, H, W] -> view [B, g, c, H, W] -> swap g and c -> [B, c*g, H, W]."""
    b, channels, h, w = x.shape
    return x.reshape(b, groups, channels // groups, h, w).transpose(1, 2).reshape(b, channels, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 (BN, ReLU), channel shuffle, 3x3 depthwise (stride s, BN, ReLU), grouped 1x1 (BN);
    at stride 2 concatenated with a 3x3 average pool of x, else added to x; then ReLU. The first
    1x1 conv is ungrouped when it reads the 24-channel stem."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_channels // 4
        first_groups = 1 if in_channels == 24 else groups
        self.stride, self.first_groups = stride, first_groups
        self.reduce = conv_bn(in_channels, mid, 1, groups=first_groups)
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid)
        self.expand = conv_bn(mid, out_channels, 1, groups=groups, relu=False)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.first_groups)))
        shortcut = self.shortcut(x)
        return self.relu(torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut)


class ShuffleNetV1(StagedClassifier):
    """Stages of (4, 8, 4) units with 240/480/960 output channels, groups 3; `feature_dim = 960`."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (240, 480, 960), blocks: tuple[int, ...] = (4, 8, 4),
                 groups: int = 3, in_channels: int = 3) -> None:
        stages, channels = [], 24
        for width, count in zip(widths, blocks, strict=True):
            # the first unit is strided and concatenates its input: it adds width - channels maps
            units = [ShuffleV1Unit(channels, width - channels, 2, groups)]
            units += [ShuffleV1Unit(width, width, 1, groups) for _ in range(count - 1)]
            stages.append(nn.Sequential(*units))
            channels = width
        super().__init__(conv_bn(in_channels, 24, 1), stages, global_pool(), channels, num_classes)


class ShuffleV2Unit(nn.Module):
    """Split the channels in two halves; the second goes through 1x1 (BN, ReLU), 3x3 depthwise (BN),
    1x1 (BN, ReLU); concatenate with the first half; shuffle with 2 groups."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, relu=False), conv_bn(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], 1), 2)


class ShuffleV2Down(nn.Module):
    """Two stride-2 branches, each giving half of the output channels, concatenated and shuffled:
    3x3 depthwise (BN) -> 1x1 (BN, ReLU), and 1x1 (BN, ReLU) -> 3x3 depthwise (BN) -> 1x1 (BN, ReLU)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(
            conv_bn(in_channels, in_channels, 3, 2, groups=in_channels, relu=False), conv_bn(in_channels, mid, 1)
        )
        self.right = nn.Sequential(
            conv_bn(in_channels, mid, 1), conv_bn(mid, mid, 3, 2, groups=mid, relu=False), conv_bn(mid, mid, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(StagedClassifier):
    """Stages of a down-sampling unit plus (3, 7, 3) units with 116/232/464 channels; neck: 1x1 conv
    to 1024 channels (BN, ReLU) and global pooling; `feature_dim = 1024`."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (116, 232, 464), blocks: tuple[int, ...] = (3, 7, 3),
                 last_channels: int = 1024, in_channels: int = 3) -> None:
        stages, channels = [], 24
        for width, count in zip(widths, blocks, strict=True):
            stages.append(nn.Sequential(ShuffleV2Down(channels, width), *(ShuffleV2Unit(width) for _ in range(count))))
            channels = width
        neck = nn.Sequential(conv_bn(channels, last_channels, 1), global_pool())
        super().__init__(conv_bn(in_channels, 24, 1), stages, neck, last_channels, num_classes)


register("shufflenetv1")(ShuffleNetV1)
register("shufflenetv2")(ShuffleNetV2)
