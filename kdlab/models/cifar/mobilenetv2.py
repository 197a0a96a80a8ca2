"""MobileNetV2 for CIFAR as used by RepDistiller / mdistiller (`mobile_half`: expansion 6, width 0.5).

Stem: 3x3 conv, stride 2. Seven groups of inverted residual blocks (t, c, n, s):
(1,16,1,1) (t,24,2,1) (t,32,3,2) (t,64,4,2) (t,96,3,1) (t,160,3,2) (t,320,1,1), channels times
`width_mult`; every block has its 1x1 expansion conv, also at t=1, as in the reference. Stages
(the feature maps the reference exposes): after groups 2, 3, 5 and 7. Neck: 1x1 conv to 1280
channels, BN, ReLU, global pooling; `feature_dim = 1280`.
"""

import torch
from torch import nn

from kdlab.models.cifar.staged import StagedClassifier, conv_bn, global_pool, init_normal_fan_out
from kdlab.models.registry import register

SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
            (None, 160, 3, 2), (None, 320, 1, 1))  # (expansion; None = the model's), channels, blocks, stride
STAGE_ENDS = (2, 3, 5, 7)  # a stage ends after these groups


class InvertedResidual(nn.Module):
    """1x1 expand (BN, ReLU) -> 3x3 depthwise (BN, ReLU) -> 1x1 project (BN); + x when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            conv_bn(in_channels, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, out_channels, 1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(StagedClassifier):
    def __init__(self, num_classes: int, width_mult: float = 0.5, expansion: int = 6, in_channels: int = 3) -> None:
        channels = int(32 * width_mult)
        stem = conv_bn(in_channels, channels, 3, stride=2)
        stages, blocks = [], []
        for group, (t, c, n, s) in enumerate(SETTINGS, start=1):
            out_channels = int(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t or expansion))
                channels = out_channels
            if group in STAGE_ENDS:
                stages.append(nn.Sequential(*blocks))
                blocks = []
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        super().__init__(stem, stages, nn.Sequential(conv_bn(channels, last, 1), global_pool()), last, num_classes)
        init_normal_fan_out(self, linear_std=0.01)


register("mobilenetv2")(MobileNetV2)
