"""A small convolutional classifier for small images (the offline default: 8x8 digits)."""

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks, global average pooling and a linear head.

    `width` sets the channels of the first block (the second has `2 * width`), so one class
    gives both the default teacher (width 32) and a much smaller student (width 8).

    Shapes: input `[B, in_channels, H, W]` -> logits `[B, num_classes]`;
    `forward(x, return_features=True)` also returns the pooled penultimate features `[B, 2 * width]`.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = 2 * width
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1, stride=2, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.backbone(x)
        logits = self.head(self.dropout(features))
        return (logits, features) if return_features else logits
