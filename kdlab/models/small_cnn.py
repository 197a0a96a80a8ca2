"""A small convolutional classifier for small images (the offline default: 8x8 digits)."""

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks, global average pooling and a linear head.

    `width` sets the channels of the first block (the second has `2 * width`), so one class
    gives both the default teacher (width 32) and a much smaller student (width 8).

    Shapes: input `[B, in_channels, H, W]` -> logits `[B, num_classes]`.
    `forward(x, return_features=True)` returns `(logits, features)`, the feature dict every kdlab
    vision model gives: `"penultimate"` the pooled features before the head `[B, feature_dim]`,
    `"stages"` the output map of each block `[[B, width, H, W], [B, 2 * width, H/2, W/2]]`.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = 2 * width
        self.stages = nn.ModuleList([conv_block(in_channels, width, stride=1), conv_block(width, 2 * width, stride=2)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        stages = []
        for stage in self.stages:
            x = stage(x)
            stages.append(x)
        penultimate = self.pool(x)
        logits = self.head(self.dropout(penultimate))
        return (logits, {"penultimate": penultimate, "stages": stages}) if return_features else logits


def conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )
