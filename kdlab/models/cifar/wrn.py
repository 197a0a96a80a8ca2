"""Wide ResNets WRN-d-k for CIFAR (Zagoruyko & Komodakis; RepDistiller / mdistiller definition).

Depth d = 6n+4: a 3x3 stem of 16 channels, 3 stages of n pre-activation blocks with 16k/32k/64k
channels (strides 1, 2, 2), then BN-ReLU, global pooling and the linear head. Stage outputs are
the (pre-activation) outputs of each stage; the penultimate feature is the pooled BN-ReLU output.
"""

from functools import partial

import torch
from torch import nn

from kdlab.models.cifar.staged import StagedClassifier, global_pool, init_normal_fan_out
from kdlab.models.registry import register


class PreActBlock(nn.Module):
    """h = relu(BN(x)); out = conv3x3(relu(BN(conv3x3(h)))) + shortcut, where the shortcut is x
    itself when shapes match and a 1x1 conv of h otherwise."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=False))
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
        )
        self.projection = (
            None if in_channels == out_channels and stride == 1
            else nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        shortcut = x if self.projection is None else self.projection(h)
        return self.residual(h) + shortcut


class WideResNet(StagedClassifier):
    """WRN-`depth`-`widen_factor`; `feature_dim = 64 * widen_factor`."""

    def __init__(self, num_classes: int, depth: int, widen_factor: int, dropout: float = 0.0,
                 in_channels: int = 3) -> None:
        if (depth - 4) % 6 != 0:
            raise ValueError(f"a WRN has depth 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        stages, channels = [], 16
        for k, width in enumerate((16 * widen_factor, 32 * widen_factor, 64 * widen_factor)):
            blocks = [PreActBlock(channels if i == 0 else width, width, 2 if k > 0 and i == 0 else 1, dropout)
                      for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        neck = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True), global_pool())
        super().__init__(stem, stages, neck, channels, num_classes)
        init_normal_fan_out(self)


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register(f"wrn_{_depth}_{_k}")(partial(WideResNet, depth=_depth, widen_factor=_k))
